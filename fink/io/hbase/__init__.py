"""The enriched archive in HBase: the table layout, the cells, batched writes that wait out an
unavailable HBase, and typed reads."""

from fink.io.hbase.cells import ArchiveError, Column, cell_schema, time_key, unkeyable
from fink.io.hbase.layout import DEFAULT_ORDER, INDEXES, LAYOUT_VERSION, META_ROW, Keys, Layout
from fink.io.hbase.tables import Writer, connect, delete_tables, ensure_tables, read_layout

__all__ = ["DEFAULT_ORDER", "INDEXES", "LAYOUT_VERSION", "META_ROW", "ArchiveError", "Column", "Keys", "Layout",
           "Writer", "cell_schema", "connect", "delete_tables", "ensure_tables", "read_layout", "time_key",
           "unkeyable"]
