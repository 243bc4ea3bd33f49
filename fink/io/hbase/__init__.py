"""The enriched archive in HBase (see :mod:`fink.io.hbase.layout`)."""

from fink.io.hbase.layout import *  # noqa: F401,F403  (temporary: split below)
