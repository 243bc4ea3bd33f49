"""An astronomical alert broker as a Jupyter-first toolkit (Spark, Kafka, HBase)."""

from importlib import metadata as _metadata

from fink.config import FinkConfig, ServicesConfig, fink_home
from fink.errors import ConfigError, FinkError, RunnerError, ServiceError
from fink.runtime.session import get_spark

try:  # setup.cfg is the one source of the version
    __version__ = _metadata.version("fink-broker-nb")
except _metadata.PackageNotFoundError:  # a source tree that was not pip-installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "FinkConfig", "FinkError", "RunnerError", "ServiceError", "ServicesConfig",
           "fink_home", "get_spark", "__version__"]
