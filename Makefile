# Two commands on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   set everything up, run the whole broker on the sample night, print and report it
#   make test   set everything up, then run the whole test suite
# Each step is skipped when already done, so a second run downloads nothing.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export FINK_HOME ?= $(HOME)/.fink
export FINK_JVM_CACHE ?= $(HOME)/.cache/fink/jvm
PYTEST_ARGS ?=

.PHONY: help venv jvm services chromium test demo stop status notebooks bench lint docs lock clean

help:
	@echo "make demo | make test | make services | make stop | make status | make lint | make docs | make lock"

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt --upgrade pip setuptools wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[notebooks,test,fink]'
	@touch $@

# the JVM artifacts, then the Spark driver's class archive (quicker starts; without it they start as before)
jvm: venv
	$(BIN)/fink jvm fetch
	-$(BIN)/fink jvm archive

services: jvm
	@$(BIN)/fink init > /dev/null
	$(BIN)/fink services start

status: venv
	$(BIN)/fink services status

# The browser test (tests/integration/test_browser.py) drives JupyterLab in Debian's chromium, never a
# browser that Playwright downloads. Installed here when missing and we are root (CI is); else the test skips.
chromium:
	@command -v chromium > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; \
	  else echo "chromium is not installed and this is not root: the browser test will skip (apt-get install -y chromium)"; fi; }

# Two pytest-xdist workers, each test file whole on one of them (its module fixtures and order hold), in the
# order of SLOW_FIRST in tests/conftest.py (the longest files first). In one process the suite kept 1.05 of the 2 cores busy (2026-12-05):
# it waits on triggers, brokers and single-threaded JVM starts. The tests that stop a service stop one of
# their own, so every test runs beside the others.
test: services chromium
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=30 $(PYTEST_ARGS)

# the demo starts the services it needs and stops them (and everything it started) at the end
demo: jvm
	@$(BIN)/fink init > /dev/null
	$(BIN)/fink demo

stop: venv
	-$(BIN)/fink stop all
	$(BIN)/fink services stop

# The notebooks are the source, each paired with a py:percent twin in notebooks/py/ (notebooks/jupytext.toml).
# JupyterLab's jupytext extension writes both files on save; after an edit made elsewhere, this takes the newer
# file of each pair, strips outputs and run metadata (keeping tags and cell ids), and writes the twin again.
# Stripped too: what JupyterLab adds on save, the kernel's language_info beyond its name and the jupytext
# options it copies from notebooks/jupytext.toml.
NB_STRIP_KEYS := metadata.jupytext \
	$(addprefix metadata.language_info.,version mimetype codemirror_mode file_extension nbconvert_exporter pygments_lexer)
notebooks: venv
	$(BIN)/jupytext --sync notebooks/*.ipynb
	$(BIN)/nbstripout --keep-id --extra-keys "$(NB_STRIP_KEYS)" notebooks/*.ipynb tests/notebooks/*.ipynb
	$(BIN)/jupytext --sync notebooks/*.ipynb

# the end-to-end benchmark writes bench-results.json and bench-results.png (the phases plus their drains);
# the per-stage benchmarks follow
bench: services
	$(BIN)/python benchmarks/bench_e2e.py
	$(BIN)/python benchmarks/bench_datasim.py
	$(BIN)/python benchmarks/bench_stream2raw.py
	$(BIN)/python benchmarks/bench_raw2science.py

# ruff, then the layer contracts of setup.cfg ([importlinter]: imports only go down, docs/architecture.md)
lint: venv
	$(BIN)/ruff check fink tests tools notebooks benchmarks
	$(BIN)/lint-imports --no-cache

# The documentation (docs/, mkdocs.yml) into site/: the pages, the API reference from the docstrings and the
# newest benchmark results (benchmarks/results/, rendered by the hook benchmarks/results.py). --strict: a warning
# (a broken link, a docstring mkdocstrings cannot read) fails the build; tests/unit/test_docs.py builds it too.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# Re-pin the Python stack from the current virtualenv.
lock: venv
	{ echo "# Exact versions of the Python stack (regenerate: make lock). Installed with pip install -c constraints.txt."; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -vi '^fink[-_]broker[-_]nb'; } > constraints.txt

clean: stop
	rm -rf $(FINK_HOME)
