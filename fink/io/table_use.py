"""Which streaming queries read or write an archive table, so that compaction never pulls
files from under them.

Every stage query that reads a table as a file stream, or writes it batch by batch,
records itself in the table's ``_fink_streams/`` folder when it is built
(:func:`attach`): its role (``read`` or ``write``), its checkpoint, its process and a
heartbeat, which the metrics listener refreshes at each progress report, idle ones
included (:func:`beat`), and which is marked stopped when the query ends (:func:`ended`).
The records stay after the query stops: they say which checkpoints have read the table.

:func:`fink.io.filestore.compact` uses them to refuse to compact a night

* while any query that reads or writes the table runs (:class:`TableInUse`);
* when a reader's checkpoint has not yet read every file of that night, or a writer's
  checkpoint has a batch planned but not committed (its replay would look for the old files).

and, after the swap, records which readers had read the old files
(``_compactions/<night>.json``): those readers skip the new files when they start again
(:func:`skip_compacted`), while a new checkpoint reads them like any other file.

Notes
-----
A query counts as running while its record says so, its heartbeat is under
:data:`STALE` seconds old and, on this host, its process is alive (a ``kill -9`` leaves a
record that says running: the dead process settles it). A stage that is building its query
while a compaction runs is refused with :class:`TableInUse` as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from fink.errors import FinkError
from fink.log import logger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from fink.io.filestore import FileStore

#: the folder of the records, under the table's root
FOLDER = "_fink_streams"
#: the marker a compaction holds while it runs
LOCK = "_compacting.json"
#: the folder of what each compaction replaced, and for whom
COMPACTIONS = "_compactions"
#: seconds after which a record's heartbeat no longer shows a running query
STALE = 600.0

_PENDING: dict[str, list[tuple["FileStore", str, dict[str, Any]]]] = {}  # query name -> records, before it starts
_RUNNING: dict[str, list[tuple["FileStore", str, dict[str, Any]]]] = {}  # query id -> its records
_ENDED: set[str] = set()  # ids of the queries whose records were released
_GUARD = threading.Lock()


class TableInUse(FinkError, RuntimeError):
    """A compaction and a stage query would use the same table at once."""


def _name(role: str, checkpoint: str) -> str:
    return f"{role}-{hashlib.sha1(checkpoint.rstrip('/').encode()).hexdigest()[:12]}.json"


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process of ``record`` (a stream record or the lock, written on this host)
    still runs: the services' own check, by PID and the process's start time when recorded
    (a PID reused by another process is not the record's)."""
    from fink.processes import process_start_time

    started = process_start_time(int(record.get("pid", 0)))
    return started is not None and record.get("pid_start") in (None, started)


def process_identity() -> dict[str, Any]:
    """This process, as the records name it."""
    from fink.processes import process_start_time

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start_time(os.getpid())}


def running(record: dict[str, Any], now: float | None = None) -> bool:
    """Whether the query of ``record`` still runs (see the module's notes)."""
    now = time.time() if now is None else now
    if not record.get("running") or now - float(record.get("heartbeat", 0)) > STALE:
        return False
    if record.get("host") == socket.gethostname():
        return _alive(record)
    return True


def records(spark: "SparkSession", root: str) -> list[dict[str, Any]]:
    """Every query recorded as reading or writing the table at ``root``."""
    from fink.io.filestore import FileStore

    store = FileStore(spark, root)
    out = []
    if not store.exists(FOLDER):
        return out
    for status in store.fs.listStatus(store.path(FOLDER)):
        name = str(status.getPath().getName())
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            out.append(json.loads(store.read_text(FOLDER, name)))
        except Exception as exc:  # noqa: BLE001 - a record cut short: its query is not known
            logger.warning("%s: unreadable stream record %s (%s)", root, name, exc)
    return out


def compaction(spark: "SparkSession", root: str) -> dict[str, Any] | None:
    """The running compaction of the table (its lock's content), or None."""
    from fink.io.filestore import FileStore

    store = FileStore(spark, root)
    if not store.exists(LOCK):
        return None
    try:
        lock = json.loads(store.read_text(LOCK))
    except Exception:  # noqa: BLE001 - being written: it runs
        return {"partition": "?", "pid": 0, "host": "?"}
    if lock.get("host") == socket.gethostname() and not _alive(lock):
        return None  # a compaction killed mid-way: its lock is stale
    return lock


def attach(spark: "SparkSession", root: str, role: str, checkpoint: str, query: str) -> None:
    """Record that the query ``query`` (checkpoint ``checkpoint``) is about to ``read`` or
    ``write`` the table at ``root``.

    Raises
    ------
    TableInUse
        A compaction of the table runs now.
    """
    from fink.io.filestore import FileStore

    store = FileStore(spark, root)
    store.fs.mkdirs(store.path(FOLDER))
    now = time.time()
    record = {"role": role, "query": query, "checkpoint": checkpoint, **process_identity(), "running": True,
              "started": now, "heartbeat": now}
    name = _name(role, checkpoint)
    store.replace_text(json.dumps(record), FOLDER, name)
    lock = compaction(spark, root)
    if lock is not None:
        record["running"] = False
        store.replace_text(json.dumps(record), FOLDER, name)
        raise TableInUse(f"{root}: {lock.get('partition')} is being compacted (process {lock.get('pid')} on "
                         f"{lock.get('host')}); start {query} again when it has ended")
    with _GUARD:
        _PENDING.setdefault(query, []).append((store, name, record))


def _write(uses: list[tuple["FileStore", str, dict[str, Any]]], **changes: Any) -> None:
    for store, name, record in uses:
        record.update(changes)
        try:
            store.replace_text(json.dumps(record), FOLDER, name)
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never stop a query
            logger.warning("%s: could not refresh the stream record of %s: %s", store.root, record["query"], exc)


def started(query: str, query_id: str) -> None:
    """The query named ``query`` has started as ``query_id``: the records built under its name are its own.

    :func:`fink.runtime.streaming.start` calls it as soon as ``start()`` returns, so a query's records are
    bound to its id before the next query of the same name is built; the listener's start event calls
    it again (for a query started otherwise) and, for an id already known, changes nothing: a late
    event of an earlier query must not take the records of a later one of the same name."""
    with _GUARD:
        if query_id in _RUNNING or query_id in _ENDED:
            return
        _RUNNING[query_id] = _PENDING.pop(query, [])


def beat(query_id: str) -> None:
    """Refresh the heartbeat of the tables the query ``query_id`` uses (called at each of its
    progress reports; nothing for a query that recorded no table, or that has ended)."""
    with _GUARD:
        if query_id in _RUNNING:
            _write(_RUNNING[query_id], heartbeat=time.time(), running=True)


def ended(query: str, query_id: str) -> None:
    """Mark the tables the query ``query_id`` used as no longer in use by it.

    Called when it is seen stopped (:func:`fink.runtime.streaming.run_until`) and again when the
    listener hears of its end: a late event of an ended query changes nothing. Only a query never
    bound to its id (started outside :func:`fink.runtime.streaming.start`, its start event not heard
    yet) releases the records built under its name ``query``."""
    with _GUARD:
        if query_id in _ENDED:
            return
        uses = _RUNNING.pop(query_id) if query_id in _RUNNING else _PENDING.pop(query, [])
        _write(uses, heartbeat=time.time(), running=False)
        _ENDED.add(query_id)


def _log_entries(store: "FileStore", folder: str) -> list[dict[str, Any]]:
    """The JSON lines of every file of a Spark metadata log folder (``sources/0``)."""
    if not store.exists(folder):
        return []
    out = []
    for status in store.fs.listStatus(store.path(folder)):
        name = str(status.getPath().getName())
        if name.startswith("."):
            continue
        for line in store.read_text(folder, name).splitlines()[1:]:  # the first line is the log's version
            if line.strip():
                out.append(json.loads(line))
    return out


def batches(store: "FileStore", folder: str) -> list[int]:
    if not store.exists(folder):
        return []
    return [int(n) for n in (str(s.getPath().getName()) for s in store.fs.listStatus(store.path(folder)))
            if n.isdigit()]


def files_read(spark: "SparkSession", checkpoint: str) -> set[str]:
    """Names of the files the file-stream query of ``checkpoint`` has read in committed batches."""
    from fink.io.filestore import FileStore

    store = FileStore(spark, checkpoint)
    done = max(batches(store, "commits"), default=-1)
    return {str(e["path"]).rpartition("/")[2] for e in _log_entries(store, "sources/0")
            if int(e.get("batchId", 0)) <= done}


def unfinished(spark: "SparkSession", checkpoint: str) -> int | None:
    """The batch the query of ``checkpoint`` planned and did not commit, or None."""
    from fink.io.filestore import FileStore

    store = FileStore(spark, checkpoint)
    planned, done = max(batches(store, "offsets"), default=-1), max(batches(store, "commits"), default=-1)
    return planned if planned > done else None


def check_compactable(spark: "SparkSession", root: str, partition: str, files: list[str]) -> list[str]:
    """Refuse (:class:`TableInUse`) unless ``files`` (names in ``partition``) can be compacted
    now; return the query ids of the readers that have read them all."""
    from fink.io.filestore import writer_id

    streams = records(spark, root)
    live = [r for r in streams if running(r)]
    if live:
        raise TableInUse(f"{root}: cannot compact {partition} while these queries use the table: "
                         + "; ".join(f"{r['query']} ({r['role']}s it, process {r['pid']} on {r['host']})"
                                     for r in live) + ". Stop them first (fink stop <service>).")
    readers = []
    for r in streams:
        checkpoint = r["checkpoint"]
        if not _exists(spark, checkpoint, "metadata"):
            continue  # its checkpoint is gone: it will read the table anew
        if r["role"] == "read":
            missing = set(files) - files_read(spark, checkpoint)
            if missing:
                raise TableInUse(f"{root}: {r['query']} (checkpoint {checkpoint}) has not read {len(missing)} "
                                 f"of the {len(files)} files of {partition} yet: run it until it has caught up, "
                                 "then compact")
            readers.append(writer_id(spark, checkpoint))
        else:
            batch = unfinished(spark, checkpoint)
            if batch is not None:
                raise TableInUse(f"{root}: {r['query']} (checkpoint {checkpoint}) has batch {batch} planned "
                                 "but not committed; its replay needs the files as they are: start it until "
                                 "that batch is done, then compact")
    return readers


def _exists(spark: "SparkSession", root: str, *parts: str) -> bool:
    from fink.io.filestore import FileStore

    return FileStore(spark, root).exists(*parts)


def compacted_for(spark: "SparkSession", root: str, checkpoint: str) -> set[str]:
    """Names of the files compactions wrote from files the query of ``checkpoint`` had
    already read: it skips them (a new checkpoint skips nothing)."""
    from fink.io.filestore import FileStore, writer_id

    if not _exists(spark, checkpoint, "metadata"):
        return set()
    store = FileStore(spark, root)
    if not store.exists(COMPACTIONS):
        return set()
    me, skip = writer_id(spark, checkpoint), set()
    for status in store.fs.listStatus(store.path(COMPACTIONS)):
        name = str(status.getPath().getName())
        if name.startswith(".") or not name.endswith(".json"):
            continue
        manifest = json.loads(store.read_text(COMPACTIONS, name))
        if me in manifest.get("read_by", []):
            skip |= set(manifest.get("files", []))
    return skip


def skip_compacted(spark: "SparkSession", df: "DataFrame", root: str, checkpoint: str) -> "DataFrame":
    """A file stream of the table at ``root`` without the rows of compacted files its query
    (``checkpoint``) had already read as the files they replaced."""
    from pyspark.sql import functions as F

    skip = compacted_for(spark, root, checkpoint)
    if not skip:
        return df
    logger.info("%s: %d compacted files already read by this query as their originals: skipped", root, len(skip))
    name = F.element_at(F.split(F.input_file_name(), "/"), -1)
    return df.filter(~name.isin(sorted(skip)))
