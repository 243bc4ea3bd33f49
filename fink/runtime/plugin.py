"""The project's own Spark plugin: Java source in the package, compiled here by ``make jvm``.

``fink/data/jvm/plugin/`` holds :data:`CLASS` (``TaskConfPlugin.java``: one SQL configuration per
task rather than one per call, which ``from_avro`` makes thousands of times an alert in
Spark 4.2). :func:`build` compiles it with the JDK's ``javac`` against pyspark's own jars (no
download) into ``$FINK_JVM_CACHE/plugin/``, stamped with the hash of its sources and the pyspark
version; :func:`jar` gives the jar once built, which :func:`fink.runtime.session.spark_conf`
hands to Spark (``spark.jars``, so a cluster's executors get it too, and ``spark.plugins``).
A session without it runs as before, only slower.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from fink.errors import JvmArtifactsError
from fink.runtime import jvm

CLASS = "fink.spark.TaskConfPlugin"
STAMP = ".built"


def sources() -> list[Path]:
    """The plugin's Java sources, in the package."""
    root = Path(str(resources.files("fink") / "data" / "jvm" / "plugin"))
    return sorted(root.rglob("*.java"))


def _pyspark_jars() -> Path:
    from importlib.util import find_spec

    spec = find_spec("pyspark")  # (not imported: a session's settings are worked out without it)
    if spec is None or spec.origin is None:
        raise JvmArtifactsError("pyspark is not installed: the Spark plugin compiles against its jars")
    return Path(spec.origin).parent / "jars"


def _digest() -> str:
    from importlib.metadata import version

    h = hashlib.sha256(version("pyspark").encode())
    for src in sources():
        h.update(src.name.encode() + src.read_bytes())
    return h.hexdigest()


def folder() -> Path:
    return jvm.cache_dir() / "plugin"


def jar() -> Path | None:
    """The built plugin's jar, or None when it is not built from the current sources."""
    path, stamp = folder() / "fink-spark-plugin.jar", folder() / STAMP
    if path.exists() and stamp.exists() and stamp.read_text().strip() == _digest():
        return path
    return None


def _javac() -> str:
    found = shutil.which("javac") or (str(Path(os.environ["JAVA_HOME"]) / "bin" / "javac")
                                      if os.environ.get("JAVA_HOME") else None)
    if not found or not Path(found).exists():
        raise JvmArtifactsError("javac not found: the Spark plugin is compiled by a JDK "
                                "(apt install openjdk-17-jdk-headless, or set JAVA_HOME)")
    return found


def build(force: bool = False) -> Path | None:
    """Compile the plugin unless built from the current sources (``force``: again); return the
    jar written now, or None when it was up to date.

    Raises
    ------
    JvmArtifactsError
        No ``javac``, or the sources do not compile against this pyspark (its message).
    """
    if jar() is not None and not force:
        return None
    srcs = sources()
    if not srcs:
        raise JvmArtifactsError("the Spark plugin's sources are missing from the package (fink/data/jvm/plugin)")
    folder().parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".plugin-", dir=folder().parent))
    try:
        classes = staging / "classes"
        cmd = [_javac(), "--release", "17", "-nowarn", "-d", str(classes),
               "-cp", str(_pyspark_jars() / "*"), *map(str, srcs)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise JvmArtifactsError(f"the Spark plugin did not compile:\n$ {' '.join(cmd[:6])} ...\n"
                                    f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
        with zipfile.ZipFile(staging / "fink-spark-plugin.jar", "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: fink\n")
            for cls in sorted(classes.rglob("*.class")):
                out.write(cls, cls.relative_to(classes).as_posix())
        shutil.rmtree(classes)
        (staging / STAMP).write_text(_digest() + "\n")
        if folder().exists():
            shutil.rmtree(folder())
        staging.rename(folder())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder() / "fink-spark-plugin.jar"
