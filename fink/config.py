"""Typed, validated configuration.

There is one override layer: the papermill parameter files under ``conf/`` (for the
notebooks) and ``$FINK_HOME/services.yaml`` (for the local services). Both are read
into frozen dataclasses whose ``from_mapping`` rejects unknown keys by name, since
papermill itself only warns about a parameter the notebook does not declare.

Secrets are never configuration: :func:`secret` reads them from the environment or
from a file only its owner can read.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fink.errors import ConfigError

T = TypeVar("T", bound="Validated")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def fink_home() -> Path:
    """Return the folder that holds data, logs and run records (``$FINK_HOME``, else ``~/.fink``)."""
    return Path(os.environ.get("FINK_HOME") or Path.home() / ".fink").expanduser().resolve()


#: the folders of a project: the notebooks, the example parameter files, the sample night (the
#: survey descriptions name ``../datasim/sample_night`` relative to ``notebooks/``)
PROJECT_FILES = {"notebooks": "*.ipynb", "conf": "*.yaml", "datasim/sample_night": "*"}
PROJECT_ENV = "FINK_PROJECT"


def project_dir() -> Path:
    """Return the folder holding ``notebooks/``, ``conf/`` and ``datasim/``, the services' sources.

    In order: ``$FINK_PROJECT``; the current folder or the nearest above it holding
    ``notebooks/`` and ``conf/`` (a clone, or a work folder ``fink init --project`` made); the
    clone holding the imported package (on the path, or installed editable); the copy that an
    installed wheel carries (``fink/data/project``, found through ``importlib.resources``).

    Raises
    ------
    ConfigError
        None of these exists (a package built without its project files).

    Notes
    -----
    The notebooks are the project's sources, not a library's data: a service runs the notebook
    a person edits, so a work folder or a clone comes before the wheel's read-only copy.
    """
    import importlib.resources

    if os.environ.get(PROJECT_ENV):
        return Path(os.environ[PROJECT_ENV]).expanduser().resolve()
    here = Path.cwd().resolve()
    package = Path(str(importlib.resources.files("fink")))
    for folder in (here, *here.parents, package.parent, package / "data" / "project"):
        if (folder / "notebooks").is_dir() and (folder / "conf").is_dir():
            return folder
    raise ConfigError(f"no notebooks/ and conf/ found from {here} nor in the installed package: "
                      f"run `fink init --project DIR` or set {PROJECT_ENV} to a clone's folder")


def local_path(location: str) -> Path | None:
    """The local folder a data location names (a path or a ``file:`` URI), or None for a URI
    of another file system (``hdfs://``, ``s3a://``), which only Spark's readers reach."""
    if location.startswith("file:"):
        return Path(urllib.parse.urlparse(location).path)
    if "://" in location:
        return None
    return Path(location)


def _check_type(name: str, value: Any, annotation: Any, source: str) -> Any:
    """Return ``value`` if it matches ``annotation`` (ints are accepted for floats)."""
    expected = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict,
                "list": list}.get(annotation if isinstance(annotation, str) else annotation.__name__)
    if expected is None:
        return value
    # bool is an int in Python; a YAML `true` for a port is a mistake worth reporting.
    if isinstance(value, bool) and annotation not in ("bool", bool):
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"{source}: '{name}' must be of type {annotation if isinstance(annotation, str) else annotation.__name__}, "
            f"got {type(value).__name__} {value!r}"
        )
    if annotation in ("float", float):
        return float(value)
    return value


class Validated:
    """Base of the config dataclasses: strict construction from a mapping, plus a per-class ``validate``."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls: type[T], data: Mapping[str, Any] | None, source: str = "configuration") -> T:
        """Build from ``data``; an unknown key or a wrongly typed value raises :class:`ConfigError`."""
        data = dict(data or {})
        names = cls.field_names()
        unknown = [k for k in data if k not in names]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(names)})"
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                values[f.name] = _check_type(f.name, data[f.name], hints[f.name], source)
        obj = cls(**values)
        obj.validate(source)
        return obj

    @classmethod
    def from_yaml(cls: type[T], path: str | os.PathLike[str]) -> T:
        """Read a YAML mapping file into this config (see :meth:`from_mapping`)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration file ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_namespace(cls: type[T], namespace: Mapping[str, Any], source: str = "notebook parameters") -> T:
        """Pick this config's fields out of a namespace (a notebook's ``globals()``)."""
        return cls.from_mapping({k: namespace[k] for k in cls.field_names() if k in namespace}, source)

    def validate(self, source: str = "configuration") -> None:  # pragma: no cover - overridden
        """Raise :class:`ConfigError` if a value is out of range."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _host_port(value: str, name: str, source: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{source}: '{name}' must be host:port, got {value!r}")
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class FinkConfig(Validated):
    """Settings every service notebook takes (the keys of the ``conf/*.yaml`` files).

    Parameters
    ----------
    kafka_bootstrap
        Kafka bootstrap servers, ``host:port[,host:port...]``.
    hbase_thrift
        HBase Thrift gateway, ``host:port``.
    spark_master
        Spark master URL: ``local[N]``, ``spark://host:7077``, ``yarn``, ``k8s://...``.
    spark_conf
        Extra Spark settings, applied last (``{"spark.executor.memory": "4g"}``).
    data_dir
        Root of the archives written by the stages; empty means ``$FINK_HOME/data``.
    log_level
        Spark's log level in the notebook (``WARN`` keeps notebooks readable).
    """

    kafka_bootstrap: str = "127.0.0.1:9092"
    hbase_thrift: str = "127.0.0.1:9090"
    spark_master: str = "local[2]"
    spark_conf: dict = dataclasses.field(default_factory=dict)
    data_dir: str = ""
    log_level: str = "WARN"

    def validate(self, source: str = "configuration") -> None:
        for server in self.kafka_bootstrap.split(","):
            _host_port(server.strip(), "kafka_bootstrap", source)
        _host_port(self.hbase_thrift, "hbase_thrift", source)
        if not self.spark_master:
            raise ConfigError(f"{source}: 'spark_master' must not be empty (use local[2] for one machine)")
        levels = ("ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF")
        if self.log_level.upper() not in levels:
            raise ConfigError(f"{source}: 'log_level' must be one of {', '.join(levels)}, got {self.log_level!r}")
        for key, value in self.spark_conf.items():
            if not isinstance(key, str) or not key.startswith("spark."):
                raise ConfigError(f"{source}: spark_conf key {key!r} must be a Spark setting (spark.*)")
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{source}: spark_conf[{key!r}] must be a scalar, got {type(value).__name__}")

    def data_uri(self, *parts: str) -> str:
        """Return a location under the archive root, for Spark readers and writers.

        ``data_dir`` may be a local folder or a URI Spark understands (``hdfs://``,
        ``s3a://``, ``file://``); it is joined as a string so that a URI keeps its ``//``.
        """
        root = self.data_dir or str(fink_home() / "data")
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])

    @property
    def hbase_host_port(self) -> tuple[str, int]:
        return _host_port(self.hbase_thrift, "hbase_thrift", "configuration")


@dataclasses.dataclass(frozen=True)
class ServicesConfig(Validated):
    """Ports, heaps and timeouts of the local services (``$FINK_HOME/services.yaml``).

    Notes
    -----
    The default heaps (Kafka 512 MiB, HBase 1.5 GiB, Thrift 256 MiB) leave room for a
    2 GiB Spark driver inside 6 GiB, with the JVMs' non-heap memory included. HBase gets
    the most: its memstores (40 % of its heap) take the archive's writes, and with 768 MiB
    they filled faster than they flushed at 1,000 alerts/s ("Blocking updates" in its log).
    """

    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_sasl_port: int = 9094
    kafka_heap: str = "512m"
    hbase_zookeeper_port: int = 2181
    hbase_master_port: int = 16000
    hbase_regionserver_port: int = 16020
    hbase_heap: str = "1536m"
    thrift_port: int = 9090
    thrift_heap: str = "256m"
    # a Spark standalone cluster on this machine (`fink services start spark`: a master, two workers)
    spark_master_port: int = 7077
    spark_master_webui_port: int = 8080
    spark_worker1_port: int = 7078
    spark_worker1_webui_port: int = 8081
    spark_worker2_port: int = 7079
    spark_worker2_webui_port: int = 8082
    spark_worker_cores: int = 1
    spark_worker_memory: str = "2g"
    spark_daemon_heap: str = "256m"
    start_timeout: float = 120.0
    stop_timeout: float = 30.0

    def validate(self, source: str = "configuration") -> None:
        if self.host not in LOOPBACK:
            raise ConfigError(f"{source}: 'host' must be a loopback address (127.0.0.1), got {self.host!r}: "
                              "the local services are for this machine only")
        ports = {k: getattr(self, k) for k in self.field_names() if k.endswith("_port")}
        for key, port in ports.items():
            if not 1 <= port <= 65535:
                raise ConfigError(f"{source}: '{key}' must be a TCP port (1-65535), got {port}")
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ConfigError(f"{source}: '{key}' and '{seen[port]}' are both {port}")
            seen[port] = key
        for key in ("kafka_heap", "hbase_heap", "thrift_heap", "spark_worker_memory", "spark_daemon_heap"):
            value = getattr(self, key)
            if not (value[:-1].isdigit() and value[-1] in "mMgG"):
                raise ConfigError(f"{source}: '{key}' must look like 512m or 2g, got {value!r}")
        if self.spark_worker_cores < 1:
            raise ConfigError(f"{source}: 'spark_worker_cores' must be at least 1")
        if self.start_timeout <= 0 or self.stop_timeout <= 0:
            raise ConfigError(f"{source}: timeouts must be positive")

    @classmethod
    def load(cls, home: Path | None = None) -> "ServicesConfig":
        """Read ``<home>/services.yaml`` if it exists, else the defaults."""
        path = (home or fink_home()) / "services.yaml"
        return cls.from_yaml(path) if path.exists() else cls()

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def kafka_users_bootstrap(self) -> str:
        """The listener users' consumers connect to (SASL/SCRAM-SHA-512, ACLs)."""
        return f"{self.host}:{self.kafka_sasl_port}"

    @property
    def hbase_thrift(self) -> str:
        return f"{self.host}:{self.thrift_port}"


#: the principal of the broker's own clients (stages, simulator, operator's commands) on the
#: internal listeners: the one super user of the local broker
SERVICE_ACCOUNT = "fink-broker"
#: the file under ``$FINK_HOME/secrets`` holding the service account's password
SERVICE_SECRET = "kafka_service"


def _check_private(path: Path) -> None:
    """Refuse a secret file that anyone but its owner may read."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: secret file has mode {mode:o}; run `chmod 600 {path}`")


def _private_text(path: Path) -> str:
    """The text of a secret file, refused if anyone but its owner may read it."""
    _check_private(path)
    return path.read_text().strip()


def service_password(home: Path | None = None, create: bool = False) -> str | None:
    """The password of :data:`SERVICE_ACCOUNT` (``$FINK_HOME/secrets/kafka_service``), or None.

    With ``create``, a missing one is generated (32 random bytes, URL-safe) in a file of mode
    0600, in a folder of mode 0700: ``fink init`` and ``fink services start`` do this.
    ``$FINK_KAFKA_SERVICE``, when set, is the password, whatever the home holds: a process
    whose ``FINK_HOME`` keeps its own data but talks to the services of another home.

    Notes
    -----
    Only this machine's operator (the owner of ``$FINK_HOME``) reads it: the local broker's
    internal listeners accept no other identity as super user, so whoever holds it may write
    any topic, the delivery log included.
    """
    import secrets as random

    given = os.environ.get(f"FINK_{SERVICE_SECRET.upper()}")
    if given:  # a process whose FINK_HOME is not the services' one (a test's, a second data home)
        return given.strip()
    path = (home or fink_home()) / "secrets" / SERVICE_SECRET
    if not path.exists():
        if not create:
            return None
        _write_private(path, random.token_urlsafe(32) + "\n")
    return _private_text(path)


def _write_private(path: Path, text: str) -> None:
    """Write a new secret file of mode 0600 in a folder of mode 0700 (never over an existing one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


#: the Spark properties file under ``$FINK_HOME/secrets`` that a standalone cluster's daemons and
#: its drivers share: ``spark.authenticate=true`` and the shared secret
SPARK_AUTH_FILE = "spark-auth.properties"


def spark_auth_file(home: Path | None = None, create: bool = False) -> Path | None:
    """The properties file (mode 0600) that switches on Spark's authentication, or None.

    ``$FINK_SPARK_AUTH_FILE`` when set (a driver whose ``FINK_HOME`` is not the cluster's), else
    ``$FINK_HOME/secrets/spark-auth.properties``; with ``create``, a missing one is made with a
    secret of 32 random bytes (``fink services start spark`` does this). A file named by
    ``$FINK_SPARK_AUTH_FILE`` is never made here: with ``create`` and no such file, a
    :class:`ConfigError` names it.

    Notes
    -----
    Spark's standalone mode reads the secret from ``spark.authenticate.secret`` only (secret
    files are for Kubernetes), and pyspark passes a session's settings to ``spark-submit`` on its
    command line, which every user of the machine sees. A properties file keeps the secret off
    every command line: the master and the workers read it with ``--properties-file``, a driver
    through ``PYSPARK_SUBMIT_ARGS`` (:func:`fink.runtime.session.get_spark`), and each worker
    hands it to its executors in their environment, as Spark does.
    """
    import secrets as random

    given = os.environ.get("FINK_SPARK_AUTH_FILE")
    path = Path(given) if given else (home or fink_home()) / "secrets" / SPARK_AUTH_FILE
    if not path.exists():
        if not create:
            return None
        if given:
            raise ConfigError(f"FINK_SPARK_AUTH_FILE names {path}, which does not exist: it is the "
                              "cluster's secret (made by `fink services start spark` in the cluster's "
                              "FINK_HOME); copy it there (mode 0600) or unset the variable")
        _write_private(path, "# the shared secret of the cluster's daemons and drivers (fink services start spark)\n"
                             f"spark.authenticate=true\nspark.authenticate.secret={random.token_hex(32)}\n")
    _check_private(path)
    return path


def secret(name: str) -> str | None:
    """Return the secret ``name`` from ``$FINK_<NAME>`` or ``$FINK_HOME/secrets/<name>``.

    Notes
    -----
    papermill writes every parameter into the executed notebook, and command lines are
    visible to every user of the machine, so credentials are read here, inside the
    library, and never passed as parameters. A secrets file readable by anyone but its
    owner is refused rather than used.
    """
    env = os.environ.get(f"FINK_{name.upper()}")
    if env:
        return env
    path = fink_home() / "secrets" / name.lower()
    if not path.exists():
        return None
    return _private_text(path)
