"""Local services of the broker stack: Kafka, HBase and its Thrift gateway; on demand, a
Spark standalone cluster (``spark``: a master and two workers).

``fink services start|stop|status`` drives these; tests and notebooks may too.
"""

from __future__ import annotations

from pathlib import Path

from fink.config import ServicesConfig, fink_home
from fink.errors import ServiceError
from fink.ops.services.hbase_server import HBaseService, ThriftService
from fink.ops.services.kafka_server import KafkaService
from fink.ops.services.service import Service, Status
from fink.ops.services.spark_cluster import SparkMasterService, SparkWorker1Service, SparkWorker2Service

# start order; stop goes the other way
SERVICES: dict[str, type[Service]] = {"kafka": KafkaService, "hbase": HBaseService, "thrift": ThriftService,
                                      "spark-master": SparkMasterService, "spark-worker-1": SparkWorker1Service,
                                      "spark-worker-2": SparkWorker2Service}
#: what ``fink services start`` starts without names: the cluster is asked for by name
DEFAULT = ["kafka", "hbase", "thrift"]
#: names that stand for several services
GROUPS = {"spark": ["spark-master", "spark-worker-1", "spark-worker-2"]}

__all__ = ["SERVICES", "Service", "Status", "select", "start", "stop", "status"]


def select(names: list[str] | None = None, home: Path | None = None,
           config: ServicesConfig | None = None) -> list[Service]:
    """Return the services named (:data:`DEFAULT` when none; ``spark`` is the cluster), in start order."""
    names = [n for name in (names or DEFAULT) for n in GROUPS.get(name, [name])]
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service '{unknown[0]}' (known: {', '.join([*SERVICES, *GROUPS])})")
    home = home or fink_home()
    config = config or ServicesConfig.load(home)
    return [SERVICES[n](config, home) for n in SERVICES if n in names]


def start(names: list[str] | None = None, **kwargs) -> list[str]:
    """Start the services in order (idempotent); return one line per service."""
    return [svc.start() for svc in select(names, **kwargs)]


def stop(names: list[str] | None = None, **kwargs) -> list[str]:
    """Stop the services in reverse order; return one line per service."""
    return [svc.stop() for svc in reversed(select(names, **kwargs))]


def status(names: list[str] | None = None, **kwargs) -> list[Status]:
    return [svc.status() for svc in select(names, **kwargs)]
