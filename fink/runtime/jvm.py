"""The JVM side of the stack: resolving it with Maven and finding it at run time.

``fink/data/jvm/pom.xml`` pins every artifact; one Maven profile per component (``kafka``,
``spark``, ``hbase``). :func:`fetch` resolves each profile from Maven Central into
``$FINK_JVM_CACHE/<component>/`` (default ``~/.cache/fink/jvm``), outside git, and
stamps it with the hash of the pom, so a second run neither downloads nor even calls
Maven. :func:`jars` lists a component's jars for a classpath.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from fink.errors import JvmArtifactsError
from fink.log import logger

COMPONENTS = ("kafka", "spark", "hbase")
STAMP = ".resolved"


def pom_path() -> Path:
    """Return the pom that pins the JVM artifacts (``$FINK_POM``, else the package's ``data/jvm/pom.xml``)."""
    path = Path(os.environ.get("FINK_POM") or str(resources.files("fink") / "data" / "jvm" / "pom.xml"))
    if not path.exists():
        raise JvmArtifactsError(f"{path}: pom not found; reinstall the package (pip install -e .) or set FINK_POM")
    return path


def cache_dir() -> Path:
    """Return the root of the resolved jars (``$FINK_JVM_CACHE`` or ``~/.cache/fink/jvm``)."""
    return Path(os.environ.get("FINK_JVM_CACHE") or Path.home() / ".cache" / "fink" / "jvm").expanduser()


def _pom_digest() -> str:
    return hashlib.sha256(pom_path().read_bytes()).hexdigest()


def is_resolved(component: str) -> bool:
    """True if ``component`` was resolved from the current pom."""
    stamp = cache_dir() / component / STAMP
    return stamp.exists() and stamp.read_text().strip() == _pom_digest()


def fetch(components: tuple[str, ...] = COMPONENTS, mvn: str = "mvn") -> list[str]:
    """Resolve ``components`` with Maven unless already resolved; return those resolved now.

    Notes
    -----
    Each component is copied into a temporary folder and renamed into place only when
    Maven succeeded, so an interrupted download never leaves a half-filled classpath
    that later looks complete.
    """
    done = []
    for component in components:
        if component not in COMPONENTS:
            raise JvmArtifactsError(f"unknown JVM component {component!r} (known: {', '.join(COMPONENTS)})")
        if is_resolved(component):
            logger.info("jvm: %s already resolved in %s", component, cache_dir() / component)
            continue
        if shutil.which(mvn) is None:
            raise JvmArtifactsError(f"'{mvn}' not found: install Maven (apt install maven) "
                                    "to resolve the JVM artifacts")
        target = cache_dir() / component
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{component}-", dir=target.parent))
        cmd = [mvn, "-B", "-q", "-f", str(pom_path()), "-P", component,
               "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
        logger.info("jvm: resolving %s: %s", component, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise JvmArtifactsError(f"Maven could not resolve the '{component}' artifacts:\n$ {' '.join(cmd)}\n{tail}")
        (staging / STAMP).write_text(_pom_digest() + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        done.append(component)
    return done


def jars(component: str) -> list[Path]:
    """Return the jars of a resolved ``component``, sorted by name."""
    folder = cache_dir() / component
    if not is_resolved(component):
        raise JvmArtifactsError(f"the '{component}' JVM artifacts are not resolved in {folder} "
                                "(or the pom changed since): run `make jvm` or `fink jvm fetch`")
    return sorted(folder.glob("*.jar"))


def classpath(component: str, *extra: Path) -> str:
    """Return a Java classpath: the ``extra`` folders first (configuration), then the jars."""
    return os.pathsep.join([str(p) for p in extra] + [str(j) for j in jars(component)])


def split_jar_name(stem: str) -> tuple[str, str]:
    """Split ``hbase-thrift-2.6.1`` into ``("hbase-thrift", "2.6.1")``.

    The version starts at the first dash-separated token shaped like ``N.N`` (so that
    ``spark-sql-kafka-0-10_2.13-4.2.0`` keeps its ``0-10`` in the name).
    """
    parts = stem.split("-")
    idx = next((i for i, p in enumerate(parts) if i > 0 and re.match(r"\d+\.\d", p)), len(parts))
    return "-".join(parts[:idx]), "-".join(parts[idx:])


def versions() -> dict[str, dict[str, str]]:
    """Return ``{component: {artifact: version}}`` of every resolved jar, for reports and tests."""
    return {c: dict(split_jar_name(jar.stem) for jar in jars(c)) for c in COMPONENTS if is_resolved(c)}
