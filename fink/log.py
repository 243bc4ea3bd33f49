"""The package logger; handlers are attached only at the edge (``fink.ops.cli``)."""

import logging

logger = logging.getLogger("fink")
