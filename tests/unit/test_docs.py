"""The documentation builds with ``mkdocs build --strict``, and shows the newest benchmark results.

The build runs in a subprocess (mkdocs' own logging and warnings stay there; ``--strict`` turns any
warning into a failure: a broken link or anchor, a docstring mkdocstrings cannot read). The README
is checked here too: its relative links resolve, and its architecture picture is the docs'.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "benchmarks" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_key_pages_are_built(site):
    pages = ["index.html", "pipeline/index.html", "surveys/index.html", "operations/index.html",
             "configuration/index.html", "security/index.html", "cluster/index.html", "benchmarks/index.html",
             "notebooks/index.html", "tests/index.html"]
    pages += [f"stages/{s}/index.html" for s in ("stream2raw", "raw2science", "distribution", "archive")]
    missing = [p for p in pages if not (site / p).is_file()]
    assert not missing, f"pages not built: {missing}"
    reference = (site / "reference" / "stages" / "index.html").read_text()
    for name in ("fink.stages.stream2raw.build", "fink.stages.raw2science", "fink.stages.pipeline.one_pass"):
        assert name in reference, f"the API reference lacks {name}"


def test_benchmarks_page_shows_the_newest_result(site):
    files = sorted(RESULTS.glob("????-??-??-*.json"))
    assert files, f"no result under {RESULTS}"
    newest = files[-1]  # the newest date (names sort by date first)
    data = json.loads(newest.read_text())
    figures = data.get("figures", data)
    key, value = next((k, v) for k, v in figures.items() if isinstance(v, (int, float, str)) and k != "date")
    page = (site / "benchmarks" / "index.html").read_text()
    row = re.compile(rf"<td>{re.escape(html.escape(str(key), quote=False))}</td>\s*"
                     rf"<td>{re.escape(html.escape(str(value), quote=False))}</td>")
    assert row.search(page), f"{newest.name}: no table row {key} | {value} on the benchmarks page"
    assert "<!-- benchmark results -->" not in page
    for src in re.findall(r'<img alt="[^"]*" src="([^"]+\.png)"', page):
        assert (site / "benchmarks" / src).resolve().is_file(), f"plot {src} not in the site"


def test_results_save_and_latest(tmp_path):
    results = _results_module()
    results.save("demo", {"alerts": 3}, date="2026-01-01", directory=tmp_path)
    path = results.save("demo", {"alerts": 5, "phases": [{"name": "a", "latency_s": {"p50": 1.0}}]},
                        plots=[{"title": "t", "table": "phases", "x": "name", "y": ["latency_s.p50"]}],
                        date="2026-01-02", directory=tmp_path)
    (tmp_path / "2026-01-03-bare.json").write_text(json.dumps({"date": "2026-01-03", "n": 1}))
    latest = results.latest(tmp_path)
    assert latest["demo"][0] == path and latest["demo"][1]["figures"]["alerts"] == 5
    assert latest["bare"][1]["figures"] == {"n": 1} and latest["bare"][1]["date"] == "2026-01-03"
    text = results.markdown(latest["demo"][1], {"t": "t.png"})
    assert "| alerts | 5 |" in text and "| a | 1.0 |" in text and "![t](t.png)" in text
    assert results.plot_png(latest["demo"][1], latest["demo"][1]["plots"][0]).startswith(b"\x89PNG")


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) if "://" not in t]
    assert links
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    picture = re.compile(r"```mermaid\n.*?```", re.S)
    assert picture.search(readme).group(0) == picture.search((ROOT / "docs" / "pipeline.md").read_text()).group(0), \
        "the README's architecture picture differs from docs/pipeline.md's"
