"""The Spark driver's class-data archive (`fink jvm archive`): a driver that ``get_spark`` starts maps
Spark's classes from it instead of loading them from the jars."""

import os
import subprocess
import sys

import pytest

from fink.runtime import class_archive
from fink.runtime.session import DRIVER_JAVA_OPTIONS, spark_conf

pytestmark = [pytest.mark.integration, pytest.mark.spark]

DRIVER = """
from fink.config import FinkConfig
from fink.runtime.session import get_spark
spark = get_spark(FinkConfig(log_level="ERROR"))
print(spark.range(10).selectExpr("sum(id)").first()[0])
spark.stop()
"""


def test_a_driver_maps_spark_s_classes_from_the_archive(class_data_archive, tmp_path):
    assert class_data_archive is not None and class_data_archive == class_archive.archive_path()
    assert class_archive.build() is None  # there already: not made again
    assert f"-XX:SharedArchiveFile={class_data_archive}" in spark_conf()["spark.driver.extraJavaOptions"]
    log = tmp_path / "classes.txt"
    # -Xshare:on: a JVM that cannot map the archive (another class path, another JDK) refuses to start
    env = {**os.environ, DRIVER_JAVA_OPTIONS: f"-Xshare:on -Xlog:class+load=info:file={log}",
           "FINK_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "45", proc.stdout[-2000:] + proc.stderr[-2000:]
    spark_classes = [line for line in log.read_text().splitlines() if "] org.apache.spark." in line]
    shared = [line for line in spark_classes if "source: shared objects file (top)" in line]
    from_jars = [line for line in spark_classes if "source: file:" in line or "source: jar:" in line]
    assert len(shared) > 3000 and len(from_jars) < 0.05 * len(shared), (len(shared), from_jars[:5])
