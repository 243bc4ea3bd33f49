"""A person's run in a real browser: JupyterLab in headless Chromium, Run > Run All Cells.

The other notebook tests run the kernel without a front end (nbval, papermill). This one
opens the project's own JupyterLab in Debian's ``chromium`` driven by Playwright, opens the
stream2raw notebook on the sample night, runs it from the Run menu, and reads what the page
shows: no traceback, every cell numbered, the live monitor changing while the query ran, the
summary figure drawn. The page is saved (Ctrl+S) and the saved notebook is checked too: the
DOM draws an error and a stderr stream alike (both ``application/vnd.jupyter.stderr``).

Notes
-----
A browser cannot pass papermill parameters, so the test opens a copy of the notebook that
papermill's own ``parameterize_notebook`` has given an ``injected-parameters`` cell (what a
person sees in papermill's output notebooks): the test's topic, a temporary archive, the
simulator, and 60 messages per micro-batch so that the 229 alerts take four batches and the
monitor has several states to show.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]
#: where the screenshot is copied for a person or a CI job to look at (ignored by git)
OUTPUT = ROOT / "tests" / "output" / "browser"
NOTEBOOK = "stream2raw"
SAMPLE_ALERTS = 229  # the bundled ZTF night
PER_BATCH = 60
#: the issue's bound for the whole test; JupyterLab, the kernel and the run share it
RUN_TIMEOUT_S = 110.0
#: the JupyterLab news prompt would cover the notebook in the screenshot
NO_NEWS = '{"fetchNews": "false"}'


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; Playwright's own browser download is not used."""
    path = os.environ.get("FINK_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; `make test` installs it "
                    "when run as root), or set FINK_CHROMIUM to a Chromium executable")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    return path


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def open_url(self, path: Path) -> str:
        return f"{self.url}/lab/tree/{path.relative_to(self.root).as_posix()}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(lab_url: str, token: str, path: str, method: str = "GET") -> int:
    request = urllib.request.Request(f"{lab_url}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


@pytest.fixture
def jupyterlab(tmp_path: Path, kafka_bootstrap: str):
    """The project's JupyterLab on a free port of 127.0.0.1, serving a copy of the repository's layout.

    ``tmp_path/lab`` holds an empty ``notebooks/`` for the test's copies and a link to the
    repository's ``datasim/``: the notebooks run from their folder and find the sample night at
    ``../datasim`` (the survey descriptions say so), as in a checkout.

    Its kernels import ``fink`` from this tree (PYTHONPATH) and write under a temporary
    FINK_HOME; JupyterLab's own settings, workspaces and runtime files stay in ``tmp_path``
    too, so neither a developer's JupyterLab layout nor this test's leaks across. At the end
    the server is shut down through its API (which ends its kernels, and with them Spark's
    JVM); what it started and is still alive after that is killed by process handle.
    """
    import psutil

    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    (root / "datasim").symlink_to(ROOT / "datasim", target_is_directory=True)
    jupyter = tmp_path / "jupyter"
    settings = jupyter / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(NO_NEWS)
    token = secrets.token_hex(16)  # in the environment of nothing but this server and the browser's URL
    port = _free_port()
    env = {**os.environ,
           "FINK_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
           "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(jupyter / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "workspaces")}
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",  # CI runs as root
           f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log)
    server = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{lab.log_tail()}")
            try:
                if _api(lab.url, token, "/api/status") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {lab.url} within 60 s:\n{lab.log_tail()}")
            time.sleep(0.3)
        yield lab
    finally:
        started = server.children(recursive=True) if proc.poll() is None else []
        try:
            _api(lab.url, token, "/api/shutdown", method="POST")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        _, alive = psutil.wait_procs(started, timeout=20)
        for p in alive:  # a kernel or JVM that outlived its server: ours, by handle
            p.kill()


def parameterized_copy(dest: Path, **parameters) -> Path:
    """The stage notebook with papermill's ``injected-parameters`` cell, as papermill would run it."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    # papermill's loader, not nbformat's: it gives every cell the metadata.tags the injection looks up
    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb")), parameters)
    path = dest / f"{NOTEBOOK}.ipynb"
    nbformat.write(nb, path)
    return path


#: one look at the page: each code cell's prompt and whether it holds the run, the kernel's
#: status, the live monitor's table (header and rows) and the summary figure's size
PAGE_STATE = """() => {
  const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell'));
  const prompts = cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
  const running = cells.map(c => ((c.querySelector('.jp-InputArea-editor') || {}).textContent || '')
                                   .includes('run_until('));
  const status = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.textContent)
                      .find(t => t.includes(' | ')) || '';
  let monitor = null;
  for (const table of document.querySelectorAll('.jp-OutputArea-output table')) {
    const header = Array.from(table.querySelectorAll('thead tr:first-child th')).map(th => th.textContent.trim());
    if (!header.includes('processed rows/s')) continue;
    const rows = Array.from(table.querySelectorAll('tbody tr'))
                      .map(tr => Array.from(tr.querySelectorAll('th, td')).map(td => td.textContent.trim()));
    monitor = {header: header, rows: rows};
  }
  const imgs = Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="image/png"] img'))
                    .map(i => [i.naturalWidth, i.naturalHeight]);
  const tracebacks = Array.from(document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
      .map(e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'));
  return {prompts, running, status, monitor, imgs, tracebacks};
}"""


def monitor_row(table: dict) -> dict[str, str]:
    """The first row of the monitor's table by column name (pandas leaves the index's column blank)."""
    return dict(zip(table["header"], table["rows"][0], strict=True))


def run_all_cells(page, lab: Lab, deadline: float) -> tuple[dict, list[dict]]:
    """Run > Run All Cells; return the page once the kernel is idle and no cell waits, with the
    monitor's states seen while the cell holding the run was busy."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    seen: list[dict] = []
    quiet = 0
    while True:
        state = page.evaluate(PAGE_STATE)
        run = [p for p, r in zip(state["prompts"], state["running"], strict=True) if r]
        if run and "*" in run[0] and state["monitor"] and state["monitor"] not in seen:
            seen.append(state["monitor"])
        idle = state["status"].endswith("| Idle") and not any("*" in p for p in state["prompts"])
        started = any(re.search(r"\[\d+\]", p) for p in state["prompts"])
        quiet = quiet + 1 if idle and started else 0
        if quiet >= 3:  # idle three looks in a row: Run All has nothing left to send
            return state, seen
        if time.monotonic() > deadline:
            page.screenshot(path=str(lab.root.parent / "timeout.png"))
            pytest.fail(f"the notebook did not finish in time: prompts {state['prompts']}, kernel "
                        f"{state['status']!r}\n{lab.log_tail()}")
        time.sleep(0.5)


@pytest.mark.timeout(180)
def test_stream2raw_run_all_in_jupyterlab(chromium, jupyterlab, topic, tmp_path):
    from playwright.sync_api import sync_playwright

    t0 = time.monotonic()
    params = yaml.safe_load((ROOT / "conf" / "ci.yaml").read_text())
    params.update(topic=topic, simulator=True, data_dir=str(tmp_path / "data"), max_offsets_per_trigger=PER_BATCH,
                  duration=90.0)
    saved = parameterized_copy(jupyterlab.notebooks, **params)
    before = saved.stat().st_mtime_ns
    shot = tmp_path / f"{NOTEBOOK}.png"

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(jupyterlab.open_url(saved))
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
            page.get_by_text(re.compile(r"\| Idle$")).wait_for(timeout=60_000)  # the kernel has started
            state, seen = run_all_cells(page, jupyterlab, t0 + RUN_TIMEOUT_S)

            # the figure scrolled into view (if drawn), the page kept as the person saw it
            figure = page.locator(".jp-OutputArea-output[data-mime-type='image/png'] img")
            if figure.count():
                figure.last.scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
            OUTPUT.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, OUTPUT / shot.name)
            print(f"screenshot: {shot} (copied to {OUTPUT / shot.name})")

            page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})  # focus, as a person would
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 20
            while saved.stat().st_mtime_ns == before and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            browser.close()
    elapsed = time.monotonic() - t0

    # no traceback on the page, every code cell ran
    assert not state["tracebacks"], state["tracebacks"][0][-2000:]
    assert all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]), state["prompts"]
    # the live monitor changed while the run's cell was busy, and ended on the whole night
    assert len(seen) >= 2, f"the monitor showed {len(seen)} state(s) while the query ran: {seen}"
    final = monitor_row(state["monitor"])
    assert final["total rows"] == str(SAMPLE_ALERTS), final
    assert int(final["batch"]) >= SAMPLE_ALERTS // PER_BATCH, final  # batches 0..3
    assert {monitor_row(m)["total rows"] for m in seen} != {str(SAMPLE_ALERTS)}, seen  # seen before the end
    # the summary figure was drawn (figsize 10 x 3.2 inches)
    assert any(w >= 500 and h >= 150 for w, h in state["imgs"]), state["imgs"]
    # what the browser saved: no error output, the run balanced, the figure kept
    assert saved.stat().st_mtime_ns != before, "Ctrl+S did not save the notebook"
    nb = nbformat.read(saved, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, f"{errors[0].ename}: {errors[0].evalue}"
    text = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
    assert f"'archived': {SAMPLE_ALERTS}" in text and "'balanced': True" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert list((tmp_path / "data" / "raw" / "night=20261127").glob("*.parquet"))
    print(f"browser run: {elapsed:.1f} s from JupyterLab up to saved; monitor states seen while the query ran:",
          *(monitor_row(m) for m in seen), sep="\n  ")
