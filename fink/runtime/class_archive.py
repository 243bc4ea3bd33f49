"""A class-data-sharing (CDS) archive of the Spark driver's classes: a driver starts in about half the time.

A Spark driver loads, verifies and links some twenty thousand classes from its jars before the
first job runs; on a small machine that is most of its start. JDK 17's dynamic CDS writes the
classes a JVM loaded into an archive when it exits (``-XX:ArchiveClassesAtExit``); a later JVM
started with ``-XX:SharedArchiveFile`` maps them instead (measured here: a session and its first
job 9.3 s -> 5.3 s). :func:`build` runs a small workload (``python -m fink.runtime.class_archive``:
a session, Avro and Parquet, pandas through Arrow, a streaming query) with the first flag;
:func:`java_options` gives the second to :func:`fink.runtime.session.spark_conf` once the archive
exists. ``make jvm`` (``fink jvm archive``) builds it.

An archive is valid for one JVM build and one classpath, down to each jar's size and modification
time (the JVM refuses an archive whose jars changed: a virtualenv made again beside a kept cache
has pyspark's jars anew). Its name is a digest of the ``java`` executable and of every jar on the
driver's class path, path, size and mtime, so another JDK, pyspark or install finds none and starts
as before (no archive is no error). Classes the workload did not load are loaded from the jars.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fink.log import logger
from fink.processes import java_executable
from fink.runtime import jvm

PREFIX = "classes-"


def _digest() -> str:
    import pyspark

    java = Path(java_executable()).resolve()
    spark_jars = sorted((Path(pyspark.__file__).resolve().parent / "jars").glob("*.jar"))
    parts = [pyspark.__version__]
    for path in [java, *spark_jars, *jvm.jars("spark")]:
        stat = path.stat()
        parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def archive_path() -> Path:
    """Where the archive for this JVM, pyspark and connector jars is (or would be)."""
    return jvm.cache_dir() / "spark" / f"{PREFIX}{_digest()}.jsa"


def java_options() -> str:
    """``-XX:SharedArchiveFile=...`` when this setup's archive exists, else an empty string."""
    try:
        path = archive_path()
    except Exception as exc:  # noqa: BLE001 - no java, no jars: the session reports it; no archive here
        logger.debug("class archive: none (%s)", exc)
        return ""
    return f"-XX:SharedArchiveFile={path}" if path.is_file() else ""


def build(force: bool = False, timeout: float = 900.0) -> Path | None:
    """Write the archive unless it exists (``force``: again); return its path, or None if it was there.

    Raises
    ------
    RuntimeError
        The workload failed or the JVM wrote no archive (its output's tail in the message).
    """
    path = archive_path()
    if path.is_file() and not force:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.{os.getpid()}"
    staging.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="fink-cds-") as work:
        env = {**os.environ, "FINK_HOME": work, "FINK_CLASS_ARCHIVE_BUILD": "1",
               "FINK_DRIVER_JAVA_OPTIONS": f"-XX:ArchiveClassesAtExit={staging} -Xlog:cds=off -Xlog:cds+dynamic=off"}
        logger.info("class archive: running the workload to write %s", path)
        proc = subprocess.run([sys.executable, "-m", "fink.runtime.class_archive", work], env=env,
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"class archive: the workload wrote no archive (exit {proc.returncode}):\n{tail}")
    staging.rename(path)
    _prune(keep=path)
    return path


def _prune(keep: Path) -> None:
    """Delete the archives of earlier setups (each ~180 MB), all but the newest other one: a kept cache
    under virtualenvs made again (CI) would otherwise gain one per run; a second setup in use beside
    this one (a wheel's virtualenv) keeps its archive."""
    others = sorted((p for p in keep.parent.glob(f"{PREFIX}*.jsa") if p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[1:]:
        old.unlink(missing_ok=True)
        logger.info("class archive: deleted %s (an earlier setup's)", old.name)


def _workload(work: Path) -> None:
    """What a stage's driver loads: a session, nested rows through Avro, Parquet written and read
    back by night, pandas through Arrow (a scalar UDF and ``mapInPandas``), a streaming query with a
    Python ``foreachBatch``, the Kafka source's relation (no broker needed for its schema)."""
    import pandas as pd
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import from_avro, to_avro

    from fink.config import FinkConfig
    from fink.runtime.session import get_spark

    spark = get_spark(FinkConfig(log_level="ERROR"), app_name="fink-class-archive")
    rows = spark.range(200).select(
        F.col("id").alias("candid"), (F.col("id") % 3).cast("string").alias("night"),
        F.struct((F.col("id") * 0.5).alias("magpsf"), F.lit("ZTF").alias("name"),
                 F.array(F.col("id"), F.col("id") + 1).alias("history")).alias("candidate"))
    schema = ('{"type": "record", "name": "a", "fields": [{"name": "candid", "type": "long"}, '
              '{"name": "magpsf", "type": "double"}]}')
    avro = rows.select(to_avro(F.struct("candid", "candidate.magpsf"), schema).alias("v"))
    decoded = avro.select(from_avro("v", schema).alias("a")).select("a.*")

    @F.pandas_udf("double")
    def twice(x: pd.Series) -> pd.Series:
        return x * 2

    def doubled(frames):
        for frame in frames:
            yield frame.assign(magpsf=frame["magpsf"] * 2)

    decoded.withColumn("y", twice("magpsf")).mapInPandas(doubled, decoded.schema).agg(F.sum("magpsf")).collect()
    spark.createDataFrame(pd.DataFrame({"v": [1.0, 2.0]})).toPandas()
    rows.write.partitionBy("night").parquet(str(work / "raw"))
    stream = spark.readStream.schema(rows.schema).parquet(str(work / "raw"))

    def each(batch, batch_id):
        batch.where(F.col("candidate.magpsf") > 1).write.mode("append").parquet(str(work / "science"))

    query = (stream.writeStream.foreachBatch(each).trigger(availableNow=True)
             .option("checkpointLocation", str(work / "checkpoint")).start())
    query.awaitTermination()
    spark.read.parquet(str(work / "science")).groupBy("night").count().collect()
    spark.read.format("kafka").option("kafka.bootstrap.servers", "127.0.0.1:1").option("subscribe", "none").load()
    spark.stop()


if __name__ == "__main__":
    _workload(Path(sys.argv[1]))
