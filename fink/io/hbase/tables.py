"""The archive's tables in HBase: connections, batched writes that wait out an unavailable
HBase, and the tables created, recorded, read back and deleted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fink.io.hbase.cells import ArchiveError
from fink.io.hbase.layout import INDEXES, META_ROW, Layout

log = logging.getLogger(__name__)


def connect(host: str, port: int, timeout_ms: int = 30000):
    import happybase

    return happybase.Connection(host, port=port, timeout=timeout_ms, autoconnect=True)



class Writer:
    """Batched, parallel, retried writes to the archive through the Thrift gateway.

    ``write`` returns only when HBase has accepted every row; while the gateway or HBase is
    down it retries with exponential backoff (``backoff`` doubling up to ``max_backoff``
    seconds), which holds the streaming query where it is, and gives up with
    :class:`ArchiveError` after ``retry_for`` seconds without success.
    """

    def __init__(self, host: str, port: int, pool_size: int = 4, batch_size: int = 200,
                 retry_for: float = 600.0, backoff: float = 0.5, max_backoff: float = 10.0,
                 on_retry: Callable[[int, float, BaseException], None] | None = None):
        import happybase

        self.host, self.port, self.batch_size = host, int(port), int(batch_size)
        self.retry_for, self.backoff, self.max_backoff = float(retry_for), float(backoff), float(max_backoff)
        self.pool = happybase.ConnectionPool(size=int(pool_size), host=host, port=int(port), timeout=30000,
                                             autoconnect=False)
        self.threads = ThreadPoolExecutor(max_workers=int(pool_size), thread_name_prefix="fink-hbase")
        self.on_retry = on_retry
        self.retries = 0

    def close(self) -> None:
        self.threads.shutdown(wait=True)

    def _put(self, table: str, rows: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> int:
        with self.pool.connection() as conn:
            try:
                # one mutateRows call per chunk (happybase's batch_size counts cells, not rows)
                with conn.table(table).batch() as batch:
                    for key, cells in rows:
                        batch.put(key, cells)
            except Exception:
                # the pool refreshes a connection only on transport errors: make sure a
                # half-failed one is reopened before it is handed out again
                conn.close()
                raise
        return len(rows)

    def retried(self, what: str, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` until it succeeds, waiting with backoff while HBase is unavailable."""
        start, wait, tries = time.monotonic(), self.backoff, 0
        while True:
            try:
                return attempt()
            except ArchiveError:
                raise
            except Exception as exc:  # thrift transport, socket, or HBase's TIOError
                tries += 1
                self.retries += 1
                down = time.monotonic() - start
                if down > self.retry_for:
                    raise ArchiveError(f"{what}: HBase at {self.host}:{self.port} still unavailable after "
                                       f"{down:.0f} s and {tries} tries: {exc}") from exc
                if self.on_retry is not None:
                    self.on_retry(tries, down, exc)
                log.warning("%s: HBase unavailable (%s); try %d again in %.1f s", what, exc, tries + 1, wait)
                time.sleep(wait)
                wait = min(wait * 2, self.max_backoff)

    def write(self, tables: dict[str, Sequence[tuple[bytes, dict[bytes, bytes]]]]) -> dict[str, int]:
        """Write ``{table: rows}``; rows are sent in chunks over the pool's connections.

        Chunks already accepted are not sent again when another chunk has to be retried.
        """
        chunk = max(self.batch_size, 1)
        pending = [(t, rows[i:i + chunk]) for t, rows in tables.items() for i in range(0, len(rows), chunk)]
        counts = {t: 0 for t in tables}

        def attempt() -> None:
            futures = [(t, rows, self.threads.submit(self._put, t, rows)) for t, rows in pending]
            failed, error = [], None
            for t, rows, future in futures:
                try:
                    counts[t] += future.result()
                except Exception as exc:
                    failed.append((t, rows))
                    error = exc
            pending[:] = failed
            if error is not None:
                raise error

        self.retried(f"writing {sum(len(r) for _, r in pending)} rows", attempt)
        return counts



def ensure_tables(conn, layout: Layout, opener: Callable[[], Any] | None = None) -> Layout:
    """Create the main and index tables if absent and record the layout in the main table.

    An existing table keeps its layout, extended by new columns; a clash is an
    :class:`ArchiveError`. Returns the layout now stored. With ``opener`` (a function
    returning a new connection), the missing tables are created side by side, each through
    a connection of its own (HBase takes about a second per table).
    """
    existing = {t.decode() for t in conn.tables()}

    def create(name: str, families: dict, through=None) -> None:
        own = through is None and opener is not None
        c = opener() if own else (through or conn)
        try:
            c.create_table(name, families)
        except Exception as exc:  # created meanwhile by another writer
            if "TableExistsException" not in repr(exc) and "already exists" not in str(exc):
                raise
        finally:
            if own:
                c.close()

    missing = [(name, families) for name, families in layout.tables.items() if name not in existing]
    if opener is not None and len(missing) > 1:
        with ThreadPoolExecutor(len(missing)) as pool:
            for done in [pool.submit(create, name, families) for name, families in missing]:
                done.result()
    else:
        for name, families in missing:
            create(name, families, conn)
    main = conn.table(layout.table)
    cells = main.row(META_ROW)
    merged = layout.merged_with(Layout.from_meta(layout.table, cells)) if cells else layout
    main.put(META_ROW, merged.meta_cells())
    return merged



def read_layout(conn, table: str) -> Layout:
    """The layout recorded in ``table``; a clear error if it is absent or not an archive."""
    if table.encode() not in conn.tables():
        raise ArchiveError(f"no archive table {table!r} in HBase (tables: "
                           f"{', '.join(t.decode() for t in conn.tables()) or 'none'})")
    cells = conn.table(table).row(META_ROW)
    if not cells:
        raise ArchiveError(f"table {table!r} holds no archive layout (row {META_ROW.decode()!r} is missing)")
    return Layout.from_meta(table, cells)



def delete_tables(conn, table: str) -> list[str]:
    """Delete the archive ``table`` and its index tables; return the names deleted."""
    existing = {t.decode() for t in conn.tables()}
    names = [n for n in (table, *(f"{table}_{i}" for i in INDEXES)) if n in existing]
    for name in names:
        conn.delete_table(name, disable=True)
    return names
