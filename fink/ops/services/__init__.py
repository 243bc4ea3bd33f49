"""Local services of the broker stack: Kafka, HBase and its Thrift gateway.

``fink services start|stop|status`` drives these; tests and notebooks may too.
"""

from __future__ import annotations

from pathlib import Path

from fink.config import ServicesConfig, fink_home
from fink.errors import ServiceError
from fink.ops.services.hbase_server import HBaseService, ThriftService
from fink.ops.services.kafka_server import KafkaService
from fink.ops.services.service import Service, Status

# start order; stop goes the other way
SERVICES: dict[str, type[Service]] = {"kafka": KafkaService, "hbase": HBaseService, "thrift": ThriftService}

__all__ = ["SERVICES", "Service", "Status", "select", "start", "stop", "status"]


def select(names: list[str] | None = None, home: Path | None = None,
           config: ServicesConfig | None = None) -> list[Service]:
    """Return the services named (all by default), in start order."""
    names = names or list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise ServiceError(f"unknown service '{unknown[0]}' (known: {', '.join(SERVICES)})")
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
