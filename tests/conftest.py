"""Shared fixtures: the local services, a Spark session, the real alerts of ../shared.

Integration fixtures start what they need idempotently (``make test`` has already
started it; a plain ``pytest`` run from a fresh shell works too) and never stop the
shared services, which other tests and the developer's notebooks use.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from fink import services
from fink.config import FinkConfig, ServicesConfig, fink_home
from fink.streaming import stop_active

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FINK_SHARED", ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def services_config() -> ServicesConfig:
    return ServicesConfig.load(fink_home())


@pytest.fixture(scope="session")
def kafka_bootstrap(services_config: ServicesConfig):
    """The local broker; the topics the tests create are deleted at the end of the session.

    Without that, every run leaves its topics' data on the broker's disk (gigabytes after
    a few hundred runs). The topics there before the session are kept.
    """
    from fink.kafka import temporary_topics

    services.start(["kafka"])
    with temporary_topics(services_config.kafka_bootstrap) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def hbase_thrift(kafka_bootstrap: str, services_config: ServicesConfig) -> tuple[str, int]:
    services.start(["kafka", "hbase", "thrift"])
    return services_config.host, services_config.thrift_port


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses."""
    return f"test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def spark(kafka_bootstrap: str):
    from fink.session import get_spark

    cfg = FinkConfig(kafka_bootstrap=kafka_bootstrap, log_level="ERROR",
                     spark_conf={"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "2"})
    session = get_spark(cfg, app_name="fink-tests")
    yield session
    stop_active(session)
    session.stop()


@pytest.fixture
def fresh_spark(spark):
    """The session with no query left over from an earlier test."""
    stop_active(spark)
    yield spark
    stop_active(spark)


@pytest.fixture(scope="session")
def shared_datasim() -> Path:
    path = SHARED / "datasim"
    if not path.is_dir():
        pytest.skip(f"real alert samples not found at {path} (set FINK_SHARED to the folder holding datasim/)")
    return path
