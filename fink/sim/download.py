"""Real ZTF nights for users: download a night of public alerts, check it, unpack it.

ZTF publishes one tarball per night at ``https://ztf.uw.edu/alerts/public/``
(``ztf_public_YYYYMMDD.tar.gz``), a gzipped tar of ``<candid>.avro`` files, each an Avro
Object Container File holding one alert. :func:`fetch_night` downloads one (resuming an
interrupted transfer), unpacks the alerts flat into ``ztf_YYYYMMDD/`` and stamps the
folder with a ``.complete`` marker, so a second call does nothing.

Command line: ``python -m fink.sim.download NIGHT [--dest DIR] [--base-url URL] [--no-progress]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import http.client
import json
import re
import shutil
import sys
import tarfile
import time
import zlib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from fink.config import fink_home
from fink.errors import FinkError
from fink.log import logger

DEFAULT_BASE = "https://ztf.uw.edu/alerts/public/"
AVRO_MAGIC = b"Obj\x01"
MARKER = ".complete"
USER_AGENT = "fink-download"
# worth another try: the server is busy or failing, not refusing this URL
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class DownloadError(FinkError, RuntimeError):
    """A night could not be downloaded, verified or unpacked."""


class _Retry(Exception):
    """An attempt ended early for a reason a new (resumed) attempt may fix."""


def night_url(night: str, base_url: str = DEFAULT_BASE) -> str:
    """Return the URL of the public alert tarball of ``night`` (``YYYYMMDD``, UTC date).

    Raises
    ------
    DownloadError
        If ``night`` is not an existing calendar date written as ``YYYYMMDD``.
    """
    try:
        # strptime alone accepts unpadded forms such as "2023101"; insist on 8 digits
        if not re.fullmatch(r"\d{8}", night):
            raise ValueError("not 8 digits")
        dt.datetime.strptime(night, "%Y%m%d")
    except (TypeError, ValueError) as exc:
        raise DownloadError(f"night {night!r} is not a date: give it as YYYYMMDD, e.g. 20231012") from exc
    return f"{base_url.rstrip('/')}/ztf_public_{night}.tar.gz"


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into ``(START, TOTAL)`` (None if absent)."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _attempt(url: str, part: Path, chunk: int, timeout: float, progress: bool) -> int | None:
    """Run one GET that appends to (or restarts) ``part``; return the announced full size, if any."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        exc.close()  # it holds the error response open: an unclosed one is a ResourceWarning
        if exc.code == 416 and have:
            # nothing left after byte `have`: the .part is complete unless the server says otherwise
            total = _content_range(exc.headers.get("Content-Range"))[1]
            if total is None or total == have:
                return have
            part.unlink()
            raise _Retry(f"server has {total} bytes, the partial file {have}: starting again") from exc
        raise
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            start = have if start is None else start
            if total is None and length is not None:
                total = start + int(length)
            if start > have:  # a gap we cannot fill: asking again would get the same answer
                part.unlink()
                raise _Retry(f"server resumed at byte {start}, not {have}: starting again")
        else:  # 200: a server that ignores Range sends everything again
            start, total = 0, (int(length) if length is not None else None)
        with open(part, "r+b" if start else "wb") as fh, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removesuffix(".part"), disable=not progress) as bar:
            fh.seek(start)
            fh.truncate()
            # http.client returns b"" (no IncompleteRead) when the peer closes early:
            # the caller compares the size with `total` to notice a truncated body
            while block := resp.read(chunk):
                fh.write(block)
                bar.update(len(block))
    return total


def download(url: str, dest: Path, *, progress: bool = True, chunk: int = 1 << 20, timeout: float = 60,
             retries: int = 5, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` left by an earlier run.

    Parameters
    ----------
    url, dest
        What to fetch and where to put it (the parent folder is created).
    progress, chunk, timeout
        Show a tqdm bar on stderr; read size in bytes; socket timeout in seconds.
    retries, backoff
        Failed attempts to retry, each resuming where the last stopped; the base of the
        linear wait between them, in seconds.

    Returns
    -------
    Path
        ``dest``, which exists only once complete.

    Notes
    -----
    Bytes go to ``dest.part`` and are renamed to ``dest`` only once their size matches
    what the server announced (``Content-Length`` or the total of ``Content-Range``), so
    an existing ``dest`` is never a truncated file. A server that ignores ``Range`` (200)
    restarts the file from zero; 416 means the part is already whole.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        try:
            total = _attempt(url, part, chunk, timeout, progress)
        except HTTPError as exc:
            if exc.code == 404:
                raise DownloadError(f"{url}: HTTP 404 Not Found; check the night and the base URL "
                                    f"(the nights published are listed at {url.rsplit('/', 1)[0]}/)") from exc
            if exc.code not in RETRY_STATUS:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL") from exc
            reason = f"HTTP {exc.code} {exc.reason}"
        except (_Retry, URLError, http.client.HTTPException, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        else:
            size = part.stat().st_size
            if total is None or size == total:
                part.replace(dest)
                return dest
            if size > total:
                part.unlink()
                raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; "
                                    f"deleted {part}: run the same command again to download from scratch")
            reason = f"connection closed after {size} of {total} bytes"
        failures += 1
        if failures > retries:
            raise DownloadError(f"{url}: still failing after {retries} retries ({reason}); {part} is kept: "
                                "run the same command again later to resume")
        logger.warning("download: %s: %s; retry %d/%d", url, reason, failures, retries)
        time.sleep(backoff * failures)


def _refusal(member: tarfile.TarInfo, out_dir: Path) -> str | None:
    """Return why ``member`` must not be extracted, or None if it is a candidate alert."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        return "unsafe path (absolute or with '..'): not extracted"
    if not member.isfile():
        return "not a regular file (link or device): not extracted"
    if not member.name.endswith(".avro"):
        return "not an .avro file: not extracted"
    data_filter = getattr(tarfile, "data_filter", None)  # Python >= 3.11.4
    if data_filter is not None:
        try:
            data_filter(member, str(out_dir))
        except tarfile.FilterError as exc:
            return f"refused by tarfile's data filter ({exc}): not extracted"
    return None


def verify_and_unpack(tarball: Path, out_dir: Path) -> dict[str, Any]:
    """Extract the Avro alerts of ``tarball`` flat into ``out_dir``; return a summary.

    Returns
    -------
    dict
        ``{"alerts": n, "rejected": [(member, reason), ...], "bytes": total, "out_dir": str}``.

    Raises
    ------
    DownloadError
        If ``tarball`` is not a readable gzipped tar (it says to delete it and download again).

    Notes
    -----
    Members are read through ``extractfile`` and written by basename, so no member name
    can place a file outside ``out_dir``; names that try (absolute, ``..``), links, non-Avro
    files (by suffix or by the ``Obj\\x01`` container header) and repeated basenames are
    reported in ``rejected`` and not written. tarfile's ``data`` filter is applied as a
    second opinion where available. Each file is written under a temporary name and renamed,
    so an interrupted unpack never leaves a truncated alert.
    """
    tarball, out_dir = Path(tarball), Path(out_dir)
    if not tarball.is_file():
        raise DownloadError(f"{tarball}: no such file; download it first (python -m fink.sim.download NIGHT)")
    out_dir.mkdir(parents=True, exist_ok=True)
    alerts, nbytes = 0, 0
    rejected: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                reason = _refusal(member, out_dir)
                name = PurePosixPath(member.name).name
                if reason is None and name in seen:
                    reason = f"duplicate file name (already extracted from {seen[name]}): not extracted"
                if reason is not None:
                    rejected.append((member.name, reason))
                    continue
                src = tar.extractfile(member)
                if src is None:  # not expected for a regular file; refuse rather than guess
                    rejected.append((member.name, "unreadable member: not extracted"))
                    continue
                with src:
                    head = src.read(len(AVRO_MAGIC))
                    if head != AVRO_MAGIC:
                        rejected.append((member.name, "not an Avro container file (no Obj\\x01 header): "
                                                      "not extracted"))
                        continue
                    tmp = out_dir / f".{name}.part"
                    with open(tmp, "wb") as out:
                        out.write(head)
                        shutil.copyfileobj(src, out)
                tmp.replace(out_dir / name)
                seen[name] = member.name
                alerts += 1
                nbytes += member.size
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DownloadError(f"{tarball}: corrupt or truncated .tar.gz ({exc}); "
                            "delete it and download again") from exc
    logger.info("download: %d alerts (%d bytes) in %s, %d members rejected", alerts, nbytes, out_dir, len(rejected))
    return {"alerts": alerts, "rejected": rejected, "bytes": nbytes, "out_dir": str(out_dir)}


def fetch_night(night: str, data_dir: Path, base_url: str = DEFAULT_BASE, progress: bool = True) -> dict[str, Any]:
    """Download and unpack the ZTF public alerts of ``night`` under ``data_dir``; idempotent.

    The tarball goes to ``data_dir/ztf_public_{night}.tar.gz`` (kept), the alerts to
    ``data_dir/ztf_{night}/``. Returns the summary of :func:`verify_and_unpack` plus
    ``"tarball"``. Once a night is unpacked, its ``.complete`` marker holds that summary and
    later calls return it without any network request.
    """
    url = night_url(night, base_url)
    data_dir = Path(data_dir)
    out_dir = data_dir / f"ztf_{night}"
    marker = out_dir / MARKER
    if marker.is_file():
        try:
            summary = json.loads(marker.read_text())
            summary["rejected"] = [tuple(r) for r in summary["rejected"]]
            logger.info("download: night %s already unpacked in %s", night, out_dir)
            return summary
        except (ValueError, KeyError, TypeError):
            logger.info("download: unreadable marker %s, unpacking again", marker)
    tarball = data_dir / f"ztf_public_{night}.tar.gz"
    # download() renames into place only when complete, so an existing tarball is whole
    if not tarball.is_file():
        download(url, tarball, progress=progress)
    summary = verify_and_unpack(tarball, out_dir)
    summary["tarball"] = str(tarball)
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(marker)
    return summary


def main(argv: list[str] | None = None, prog: str = "python -m fink.sim.download") -> int:
    """Command line: download and unpack one night; ``argv`` excludes the program name."""
    parser = argparse.ArgumentParser(prog=prog, description="Download and unpack one night of ZTF public alerts.")
    parser.add_argument("night", metavar="NIGHT", help="the night, as YYYYMMDD (e.g. 20231012)")
    parser.add_argument("--dest", metavar="DIR", type=Path, help="data folder (default $FINK_HOME/datasim/ztf)")
    parser.add_argument("--base-url", metavar="URL", default=DEFAULT_BASE,
                        help=f"where the tarballs are (default {DEFAULT_BASE})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    dest = args.dest if args.dest is not None else fink_home() / "datasim" / "ztf"
    try:
        summary = fetch_night(args.night, dest, base_url=args.base_url, progress=not args.no_progress)
    except DownloadError as exc:
        print(f"fink: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fink: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"night {args.night}: {summary['alerts']} alerts "
          f"({tqdm.format_sizeof(summary['bytes'], 'B', 1024)}) in {summary['out_dir']}")
    print(f"tarball: {summary['tarball']}")
    for name, reason in summary["rejected"]:
        print(f"rejected: {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
