"""Downloading a ZTF night: resume, servers that ignore Range, safe unpacking, idempotence.

Everything runs against an http.server on 127.0.0.1 started by the test; no internet.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import fastavro
import pytest

from fink.sim import download as dl
from fink.sim.download import DownloadError

ROOT = Path(__file__).resolve().parents[2]
NIGHT = "20231012"
SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "alert", "namespace": "test",
    "fields": [{"name": "objectId", "type": "string"}, {"name": "candid", "type": "long"},
               {"name": "magpsf", "type": "float"}],
})
RECORDS = [{"objectId": f"ZTF23aa{i:05d}", "candid": 2_400_000_000_000_000_000 + i, "magpsf": 18.5 + i / 4}
           for i in range(5)]


def avro_bytes(record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, SCHEMA, [record])
    return buf.getvalue()


ALERTS = {f"{r['candid']}.avro": avro_bytes(r) for r in RECORDS}


def make_tarball() -> bytes:
    """A night's tarball: the alerts (one in a sub-folder) plus members that must be refused."""
    members = [(name if i else f"sub/{name}", data) for i, (name, data) in enumerate(ALERTS.items())]
    members += [
        ("README.txt", b"not an alert\n"),
        ("../evil.avro", ALERTS[next(iter(ALERTS))]),
        ("/abs.avro", ALERTS[next(iter(ALERTS))]),
        ("fake.avro", b"PK\x03\x04 a zip, not avro"),
        (f"other/{next(iter(ALERTS))}", b"Obj\x01 same basename as the first alert"),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TARBALL = make_tarball()
TARNAME = f"ztf_public_{NIGHT}.tar.gz"


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; ``server.mode`` picks a misbehaviour; records every request."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if srv.mode == "truncate_first" and len(srv.requests) == 1 or srv.mode == "always_truncate":
            # announce the whole body, send half, then close: a dropped connection
            self._send(200, body, length=len(body), payload=body[: len(body) // 2])
        elif srv.mode == "overlong" and rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            self._send(206, body, length=None, payload=body[start:] + b"extra",
                       extra={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        elif rng and srv.mode != "ignore_range":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self._send(416, b"", length=0, payload=b"", extra={"Content-Range": f"bytes */{len(body)}"})
            else:
                self._send(206, body, length=len(body) - start, payload=body[start:],
                           extra={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            self._send(200, body, length=len(body), payload=body)

    def _send(self, status, body, *, length, payload, extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def serve():
    """Start ``serve(files, mode)`` servers on 127.0.0.1; all are shut down and closed at teardown."""
    running = []

    def start(files: dict[str, bytes], mode: str = "normal") -> tuple[HTTPServer, str]:
        httpd = HTTPServer(("127.0.0.1", 0), Handler)
        httpd.files, httpd.mode, httpd.requests = files, mode, []
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((httpd, thread))
        return httpd, f"http://127.0.0.1:{httpd.server_port}/alerts/public/"

    yield start
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_and_unpack_round_trip(serve, tmp_path, capsys):
    httpd, base = serve({TARNAME: TARBALL})
    tarball = dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=True, chunk=100)
    assert tarball.read_bytes() == TARBALL
    assert not tarball.with_suffix(".gz.part").exists()
    assert "B" in capsys.readouterr().err  # the tqdm bar, in bytes

    out = tmp_path / "deep" / "out"
    summary = dl.verify_and_unpack(tarball, out)
    assert summary["alerts"] == len(ALERTS)
    assert summary["bytes"] == sum(len(b) for b in ALERTS.values())
    assert summary["out_dir"] == str(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(ALERTS)
    for name, data in ALERTS.items():
        assert (out / name).read_bytes() == data
    decoded = {}
    for path in out.iterdir():
        with open(path, "rb") as fh:
            (record,) = list(fastavro.reader(fh))
        decoded[record["candid"]] = record
    assert decoded == {r["candid"]: r for r in RECORDS}

    reasons = dict(summary["rejected"])
    assert set(reasons) == {"README.txt", "../evil.avro", "/abs.avro", "fake.avro", f"other/{next(iter(ALERTS))}"}
    assert "not an .avro" in reasons["README.txt"]
    assert "unsafe path" in reasons["../evil.avro"] and "unsafe path" in reasons["/abs.avro"]
    assert "Avro container" in reasons["fake.avro"]
    assert "duplicate" in reasons[f"other/{next(iter(ALERTS))}"]
    # nothing written beside or above out_dir
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
    assert not Path("/abs.avro").exists()


def test_resume_after_dropped_connection(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL}, mode="truncate_first")
    dest = dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=False, backoff=0)
    assert dest.read_bytes() == TARBALL
    assert len(httpd.requests) == 2
    assert httpd.requests[0][1] is None
    assert httpd.requests[1][1] == f"bytes={len(TARBALL) // 2}-"


def test_resume_from_leftover_part_requests_only_the_rest(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL})
    k = len(TARBALL) // 3
    (tmp_path / (TARNAME + ".part")).write_bytes(TARBALL[:k])
    dest = dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=False)
    assert dest.read_bytes() == TARBALL
    assert [r for _, r in httpd.requests] == [f"bytes={k}-"]


def test_complete_part_is_accepted_on_416(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL})
    (tmp_path / (TARNAME + ".part")).write_bytes(TARBALL)
    dest = dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=False)
    assert dest.read_bytes() == TARBALL
    assert [r for _, r in httpd.requests] == [f"bytes={len(TARBALL)}-"]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL}, mode="ignore_range")
    (tmp_path / (TARNAME + ".part")).write_bytes(b"garbage that must not survive")
    dest = dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=False)
    assert dest.read_bytes() == TARBALL
    assert httpd.requests[0][1] is not None  # it was asked to resume, and answered 200


def test_too_many_failures_keep_the_part_and_say_so(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL}, mode="always_truncate")
    url = dl.night_url(NIGHT, base)
    with pytest.raises(DownloadError, match=r"(?s)still failing after 2 retries.*resume") as err:
        dl.download(url, tmp_path / TARNAME, progress=False, retries=2, backoff=0)
    assert url in str(err.value)
    assert len(httpd.requests) == 3
    assert not (tmp_path / TARNAME).exists()


def test_size_mismatch_is_an_error(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL}, mode="overlong")
    part = tmp_path / (TARNAME + ".part")
    part.write_bytes(TARBALL[:10])
    with pytest.raises(DownloadError, match="server announced"):
        dl.download(dl.night_url(NIGHT, base), tmp_path / TARNAME, progress=False)
    assert not part.exists() and not (tmp_path / TARNAME).exists()


def test_404_names_the_url(serve, tmp_path):
    httpd, base = serve({})
    url = dl.night_url(NIGHT, base)
    with pytest.raises(DownloadError, match="404") as err:
        dl.download(url, tmp_path / TARNAME, progress=False)
    assert url in str(err.value)
    assert not any(tmp_path.iterdir())


def test_corrupt_tarball_says_download_again(tmp_path):
    bad = tmp_path / TARNAME
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(DownloadError, match="download again") as err:
        dl.verify_and_unpack(bad, tmp_path / "out")
    assert str(bad) in str(err.value)


def test_truncated_tarball_says_download_again(tmp_path):
    bad = tmp_path / TARNAME
    bad.write_bytes(TARBALL[: len(TARBALL) // 2])
    with pytest.raises(DownloadError, match="delete it and download again"):
        dl.verify_and_unpack(bad, tmp_path / "out")


def test_fetch_night_is_idempotent(serve, tmp_path):
    httpd, base = serve({TARNAME: TARBALL})
    first = dl.fetch_night(NIGHT, tmp_path, base_url=base, progress=False)
    assert first["alerts"] == len(ALERTS)
    assert first["tarball"] == str(tmp_path / TARNAME)
    assert (tmp_path / f"ztf_{NIGHT}" / dl.MARKER).is_file()
    assert len(httpd.requests) == 1
    second = dl.fetch_night(NIGHT, tmp_path, base_url=base, progress=False)
    assert second == first
    assert len(httpd.requests) == 1


@pytest.mark.parametrize("night", ["20231312", "2023101", "2023-10-12", "20230230", ""])
def test_night_url_rejects_bad_dates(night):
    with pytest.raises(DownloadError, match="YYYYMMDD"):
        dl.night_url(night)


def test_night_url():
    assert dl.night_url("20231012") == "https://ztf.uw.edu/alerts/public/ztf_public_20231012.tar.gz"
    assert dl.night_url("20231012", "http://h/x") == "http://h/x/ztf_public_20231012.tar.gz"


def test_main_end_to_end(serve, tmp_path, capsys, monkeypatch):
    httpd, base = serve({TARNAME: TARBALL})
    assert dl.main([NIGHT, "--dest", str(tmp_path), "--base-url", base, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{len(ALERTS)} alerts" in out and str(tmp_path / f"ztf_{NIGHT}") in out
    assert "rejected: README.txt" in out

    # without --dest the night goes under $FINK_HOME/datasim/ztf
    monkeypatch.setenv("FINK_HOME", str(tmp_path / "home"))
    assert dl.main([NIGHT, "--base-url", base, "--no-progress"]) == 0
    assert (tmp_path / "home" / "datasim" / "ztf" / f"ztf_{NIGHT}" / dl.MARKER).is_file()


def test_main_reports_errors_on_one_line(serve, tmp_path, capsys):
    httpd, base = serve({})
    assert dl.main(["20231312", "--dest", str(tmp_path), "--base-url", base]) == 1
    assert dl.main([NIGHT, "--dest", str(tmp_path), "--base-url", base, "--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("fink: error: ") for line in err)
    assert "20231312" in err[0] and "404" in err[1]


def test_shell_script(serve, tmp_path):
    script = ROOT / "datasim" / "download_ztf_alert_data.sh"
    assert os.access(script, os.X_OK)
    usage = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    httpd, base = serve({TARNAME: TARBALL})
    run = subprocess.run([str(script), NIGHT, "--dest", str(tmp_path), "--base-url", base, "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{len(ALERTS)} alerts" in run.stdout
    assert sorted(p.name for p in (tmp_path / f"ztf_{NIGHT}").glob("*.avro")) == sorted(ALERTS)
