"""A Spark standalone cluster on this machine: a master and two workers, each its own JVM.

Notes
-----
The daemons run from the installed pyspark distribution (its ``jars/``: the same Spark the
driver runs), started as ``java ... org.apache.spark.deploy.master.Master`` and
``...deploy.worker.Worker``, which is what Spark's own ``spark-class`` does. Everything
listens on the configured host (loopback): ``SPARK_LOCAL_IP`` is set for the daemons and so for
the executors the workers start. Each worker has its own work folder under
``$FINK_HOME/services/<worker>/work`` (the executors' logs and the files an application ships).
A driver connects with ``spark_master: spark://127.0.0.1:7077``; its Python workers run the
``python`` of ``spark.pyspark.python``, which must import ``fink`` (an environment with the
wheel installed) or get it through ``spark.submit.pyFiles``.

Spark's RPC is authenticated: the daemons start with ``--properties-file`` on
``$FINK_HOME/secrets/spark-auth.properties`` (``spark.authenticate=true`` and a shared secret,
made at the first start, mode 0600), each worker hands the secret to its executors in their
environment, and a driver must set ``spark.authenticate: "true"`` (``conf/cluster.yaml`` does)
to be let in (:func:`fink.runtime.session.get_spark` reads the same file). The web UIs are not
authenticated (Spark has no login of its own): they listen on loopback only here; see
``docs/cluster.md`` for a cluster of several machines.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from fink.config import spark_auth_file
from fink.ops.services.service import Service
from fink.processes import port_open


def spark_home() -> Path:
    """The installed pyspark distribution (``jars/``, ``bin/``), which the executors start from."""
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pyspark is not installed")
    return Path(spec.origin).parent


class _SparkDaemon(Service):
    main_class = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_file = self.out_file  # the daemons log to their console (Spark's own log4j2 defaults)

    @property
    def distribution(self) -> Path:
        """A Spark home the workers launch executors from: pyspark's ``jars/`` and ``bin/`` with a
        ``RELEASE`` file (without one, Spark looks for a source build's folders and fails with
        "Cannot find any build directories")."""
        return self.home / "services" / "spark-home"

    def prepare(self) -> None:
        import pyspark

        home = self.distribution
        home.mkdir(parents=True, exist_ok=True)
        for name in ("jars", "bin"):
            link = home / name
            if link.is_symlink() and link.resolve() != (spark_home() / name).resolve():
                link.unlink()  # pyspark reinstalled elsewhere
            if not link.exists():
                link.symlink_to(spark_home() / name, target_is_directory=True)
        (home / "RELEASE").write_text(f"Spark {pyspark.__version__} (the pyspark distribution, for fink's cluster)\n")

    def environment(self) -> dict[str, str]:
        # the Scala version of the jars (spark-core_2.13-...): Spark's launcher asks for it, as
        # bin/load-spark-env.sh sets it, before it reads the jars' folder
        (core,) = sorted(spark_home().glob("jars/spark-core_*.jar"))[:1]
        scala = core.name.removeprefix("spark-core_").split("-")[0]
        return {"SPARK_HOME": str(self.distribution), "SPARK_SCALA_VERSION": scala, "SPARK_LOCAL_IP": self.config.host,
                "SPARK_LOG_DIR": str(self.home / "logs"), "SPARK_NO_DAEMONIZE": "1"}

    def daemon_args(self) -> list[str]:
        raise NotImplementedError

    def java_args(self) -> list[str]:
        c = self.config
        auth = spark_auth_file(self.home, create=True)  # the secret stays off the command line
        return [f"-Xms{c.spark_daemon_heap}", f"-Xmx{c.spark_daemon_heap}", "-Djava.awt.headless=true",
                "-cp", str(spark_home() / "jars" / "*"), self.main_class, *self.daemon_args(),
                "--properties-file", str(auth)]

    def master_state(self) -> dict:
        """The master's JSON status page (its workers, their state), {} while it does not answer."""
        url = f"http://{self.config.host}:{self.config.spark_master_webui_port}/json/"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except (OSError, ValueError):
            return {}


class SparkMasterService(_SparkDaemon):
    """The standalone master: applications register here and get executors on the workers."""

    name = "spark-master"
    main_class = "org.apache.spark.deploy.master.Master"

    def ports(self) -> dict[str, int]:
        return {"spark_master_port": self.config.spark_master_port,
                "spark_master_webui_port": self.config.spark_master_webui_port}

    def daemon_args(self) -> list[str]:
        c = self.config
        return ["--host", c.host, "--port", str(c.spark_master_port), "--webui-port", str(c.spark_master_webui_port)]

    def ready(self) -> bool:
        return port_open(self.config.host, self.config.spark_master_port) and \
            self.master_state().get("status") == "ALIVE"


class _SparkWorker(_SparkDaemon):
    """A worker with ``spark_worker_cores`` cores and ``spark_worker_memory`` for executors."""

    main_class = "org.apache.spark.deploy.worker.Worker"
    number = 0

    def ports(self) -> dict[str, int]:
        return {f"spark_worker{self.number}_port": getattr(self.config, f"spark_worker{self.number}_port"),
                f"spark_worker{self.number}_webui_port": getattr(self.config, f"spark_worker{self.number}_webui_port")}

    @property
    def work_dir(self) -> Path:
        return self.run_dir / "work"

    def prepare(self) -> None:
        super().prepare()
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def daemon_args(self) -> list[str]:
        c = self.config
        port, ui = self.ports().values()
        return [f"spark://{c.host}:{c.spark_master_port}", "--host", c.host, "--port", str(port),
                "--webui-port", str(ui), "--cores", str(c.spark_worker_cores), "--memory", c.spark_worker_memory,
                "--work-dir", str(self.work_dir)]

    def ready(self) -> bool:
        """Registered with the master, and alive there."""
        port = next(iter(self.ports().values()))
        return any(w.get("port") == port and w.get("state") == "ALIVE"
                   for w in self.master_state().get("workers", []))


class SparkWorker1Service(_SparkWorker):
    name = "spark-worker-1"
    number = 1


class SparkWorker2Service(_SparkWorker):
    name = "spark-worker-2"
    number = 2
