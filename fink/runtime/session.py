"""The Spark session of the notebooks and stages.

Notes
-----
The Kafka and Avro connectors are given to Spark as local jar files resolved ahead of
time by Maven (``make jvm``), not as ``spark.jars.packages``: a session then starts
without the network, and the jars it runs with are the ones pinned in ``fink/data/jvm/pom.xml``.
On a cluster the same paths are shipped to the executors by ``spark.jars``.
"""

from __future__ import annotations

import os
import shlex
import sys
import urllib.parse
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fink.config import LOOPBACK, SPARK_AUTH_FILE, FinkConfig, fink_home, spark_auth_file
from fink.errors import ConfigError
from fink.runtime import class_archive, jvm, plugin

if TYPE_CHECKING:  # importing pyspark starts nothing, but keep `import fink` light
    from pyspark.sql import SparkSession

DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "4",
    # a stop() must not wait forever on a Kafka fetch (STYLE: headless runs always end)
    "spark.sql.streaming.stopTimeout": "30s",
    "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "2g",
    "spark.ui.showConsoleProgress": "false",
    # an alert row is 50-80 KB (cutouts): Spark's default batches of 4096 (Parquet) and 10000
    # (cache) rows would hold hundreds of MB each and drown the driver in garbage collection
    "spark.sql.parquet.columnarReaderBatchSize": "256",
    "spark.sql.inMemoryColumnarStorage.batchSize": "256",
    # and so would Arrow's 10000-row batches for the Python UDFs (modules, filters) and the
    # archive's mapInArrow: 700 MB per batch, twice over while a UDF's input rows wait in the
    # JVM for its results (a 6 GB driver ran out of heap behind a backlog at 1,000 alerts/s)
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # Tungsten pages of 4 MB rather than 64 MB: with G1's 16 MB regions (the driver's Java
    # options) a page is an ordinary object, where a 64 MB one needs 16 free regions in a row;
    # behind a backlog the heap was fragmented enough to fail that with 1 GB free
    "spark.buffer.pageSize": "4m",
    # Parquet row groups of 32 MB (about 450 alerts) read as partitions of at most 32 MB: a
    # task, and what distribution fetches into the driver per partition, stays that small
    # however large the micro-batch (a 350 MB partition ran a 6 GB driver out of heap)
    "spark.hadoop.parquet.block.size": str(32 << 20),
    "spark.sql.files.maxPartitionBytes": str(32 << 20),
    # the status store keeps every SQL execution's plan (from_avro's schemas make them large):
    # a long-running stream keeps the last few only
    "spark.sql.ui.retainedExecutions": "50",
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.sql.streaming.ui.retainedProgressUpdates": "100",
    # a partitioned write (by night) would otherwise sort whole alert rows by partition
    # first; with a few nights per batch, one open file per night is cheaper
    "spark.sql.optimizer.plannedWrite.enabled": "false",
    "spark.sql.maxConcurrentOutputFileWriters": "8",
    # queries sharing a session (stream2raw and raw2science) take turns (fink.runtime.streaming.start)
    "spark.scheduler.mode": "FAIR",
    # the compiled classes of generated code, by their source: a one-pass micro-batch needs about
    # 90 (projections over the alert's hundreds of nested fields), more than the default 100 hold
    # once split over the cache's segments, so that each batch compiled about 30 of them again
    # (and the JIT compiled the new classes again): 0.45 s of a 3.6 s batch of 100 alerts
    "spark.sql.codegen.cache.maxEntries": "2000",
    # expressions evaluated by Spark's interpreted classes, not by code generated for each plan: an
    # alert's projections over hundreds of nested fields generate (each task), compile and JIT-compile
    # large classes, which cost more than they save on alerts. bench_e2e.py, same hour, default ->
    # these two: cold start 46.1 -> 37.3 s, 100 alerts/s p50 11.0 -> 7.1 s and p99 17.4 -> 12.0 s,
    # 300 alerts/s carried 133 -> 148 /s, a 10,000 burst drained in 69.2 -> 62.1 s. (factoryMode is
    # an internal setting of Spark's, used by its own tests to run every expression interpreted.)
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # Spark 4.2 reads this setting for each field of each nested record from_avro builds, and with
    # no value set its default reads the process environment (SPARK_TESTING) each time: 6.5 % of the
    # driver JVM's CPU samples at 150 alerts/s (JFR, bench_e2e.py). False is its default outside
    # Spark's own tests; it only concerns the TIME type, which no alert carries.
    "spark.sql.types.framework.enabled": "false",
}

#: Extra options for the Spark driver's JVM, appended to those above (a ``spark_conf`` setting of
#: ``spark.driver.extraJavaOptions`` replaces them all). The test suite sets ``-XX:TieredStopAtLevel=1``:
#: its many short Spark runs start in half the time with the JIT's quick tier only (a JVM that runs for
#: hours wants the full JIT).
DRIVER_JAVA_OPTIONS = "FINK_DRIVER_JAVA_OPTIONS"

LOCAL_DEFAULTS: dict[str, str] = {
    # loopback only on one machine (local[...], or a standalone master on 127.0.0.1 such as
    # `fink services start spark`'s); a cluster of several machines sets its own addresses
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
}


def spark_conf(fink_cfg: FinkConfig | None = None, app_name: str = "fink",
               overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Return the Spark settings :func:`get_spark` would use, without starting anything.

    Order of precedence: :data:`DEFAULTS`, then the local ones when the master is
    ``local[...]`` or a standalone master on a loopback address, then the connector jars, then
    ``fink_cfg.spark_conf``, then ``overrides``.
    """
    fink_cfg = fink_cfg or FinkConfig()
    conf = dict(DEFAULTS)
    master_host = urllib.parse.urlparse(fink_cfg.spark_master).hostname if "://" in fink_cfg.spark_master else None
    if fink_cfg.spark_master.startswith("local") or master_host in LOOPBACK:
        conf.update(LOCAL_DEFAULTS)
    conf["spark.master"] = fink_cfg.spark_master
    conf["spark.app.name"] = app_name
    built = plugin.jar()  # the project's Spark plugin, once `make jvm` compiled it
    conf["spark.jars"] = ",".join(str(p) for p in [*jvm.jars("spark"), *([built] if built else [])])
    if built:
        conf["spark.plugins"] = plugin.CLASS
    log4j = resources.files("fink") / "data" / "log4j2-spark.properties"
    # JDK 17's G1 gives up on an allocation after waiting twice for JNI critical sections (zstd
    # and snappy compression hold them) and throws OutOfMemoryError with the heap half free:
    # a burst on Rubin's stream died so ("Retried waiting for GCLocker too often")
    conf["spark.driver.extraJavaOptions"] = (f"-Dlog4j.configurationFile={log4j} -XX:G1HeapRegionSize=16m "
                                             "-XX:+IgnoreUnrecognizedVMOptions -XX:+UnlockDiagnosticVMOptions "
                                             "-XX:GCLockerRetryAllocationCount=100")
    if not os.environ.get("FINK_CLASS_ARCHIVE_BUILD"):  # the classes of `fink jvm archive`, once it ran
        archived = class_archive.java_options()
        conf["spark.driver.extraJavaOptions"] += f" {archived}" if archived else ""
    if os.environ.get(DRIVER_JAVA_OPTIONS):  # e.g. the test suite's quick-start JVMs
        conf["spark.driver.extraJavaOptions"] += " " + os.environ[DRIVER_JAVA_OPTIONS]
    conf["spark.sql.warehouse.dir"] = str(fink_home() / "spark-warehouse")
    conf.update({k: str(v) for k, v in fink_cfg.spark_conf.items()})
    conf.update({k: str(v) for k, v in (overrides or {}).items()})
    return conf


def authentication_file(conf: Mapping[str, str]) -> Path | None:
    """The properties file with the standalone cluster's secret when ``conf`` asks for
    ``spark.authenticate`` on a ``spark://`` master, else None (local mode needs none; YARN
    makes its own).

    Raises
    ------
    ConfigError
        Authentication asked for and no secret file (:func:`fink.config.spark_auth_file`).
    """
    if str(conf.get("spark.authenticate", "false")).lower() != "true" or \
            not str(conf.get("spark.master", "")).startswith("spark://"):
        return None
    path = spark_auth_file()
    if path is None:
        raise ConfigError(
            f"spark.authenticate is on for {conf['spark.master']} but this machine has no secret for it: "
            f"{fink_home() / 'secrets' / SPARK_AUTH_FILE} is made by `fink services start spark` on the cluster; "
            "copy it here with mode 0600 (or point FINK_SPARK_AUTH_FILE at it)")
    return path


def get_spark(fink_cfg: FinkConfig | None = None, app_name: str = "fink",
              overrides: Mapping[str, Any] | None = None) -> "SparkSession":
    """Return the Spark session (created on first call, reused after).

    Parameters
    ----------
    fink_cfg
        Master and extra settings (``spark_master``, ``spark_conf``); defaults to local[2].
    app_name
        Name shown in the Spark UI and in cluster managers.
    overrides
        Settings applied last, e.g. ``{"spark.sql.shuffle.partitions": "8"}``.

    Returns
    -------
    SparkSession
        With the Kafka and Avro connectors on its classpath and the log level of
        ``fink_cfg.log_level``.
    """
    from pyspark.sql import SparkSession

    fink_cfg = fink_cfg or FinkConfig()
    # pyspark starts its JVM with this python for the workers too
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    conf = spark_conf(fink_cfg, app_name, overrides)
    auth = authentication_file(conf)
    if auth is not None:  # read by spark-submit when pyspark starts the JVM: the secret on no command line
        submit = os.environ.get("PYSPARK_SUBMIT_ARGS", "pyspark-shell")
        if "--properties-file" not in submit:
            os.environ["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {shlex.quote(str(auth))} {submit}"
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(fink_cfg.log_level.upper())
    return spark
