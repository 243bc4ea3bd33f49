"""The package logger; handlers are attached only at the edge (``fink.cli``)."""

import logging

logger = logging.getLogger("fink")
