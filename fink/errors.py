"""The one exception hierarchy of the package.

Every error the toolkit raises on purpose derives from :class:`FinkError`, so a notebook
or a script can catch them all at once; messages name the input at fault and the fix.
"""

from __future__ import annotations


class FinkError(Exception):
    """Base class of all errors raised by the toolkit."""


class ConfigError(FinkError, ValueError):
    """A configuration value or file is invalid (unknown key, wrong type, bad value)."""


class ServiceError(FinkError, RuntimeError):
    """A local service (Kafka, HBase, Thrift) could not be started, reached or stopped."""


class JvmArtifactsError(FinkError, RuntimeError):
    """The JVM artifacts (connector jars, Kafka, HBase) are missing or incomplete."""


class RunnerError(FinkError, RuntimeError):
    """A notebook service could not be started, found or stopped."""
