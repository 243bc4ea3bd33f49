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
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

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

    def environment(self) -> dict[str, str]:
        return {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": self.config.host,
                "SPARK_LOG_DIR": str(self.home / "logs"), "SPARK_NO_DAEMONIZE": "1"}

    def daemon_args(self) -> list[str]:
        raise NotImplementedError

    def java_args(self) -> list[str]:
        c = self.config
        return [f"-Xms{c.spark_daemon_heap}", f"-Xmx{c.spark_daemon_heap}", "-Djava.awt.headless=true",
                "-cp", str(spark_home() / "jars" / "*"), self.main_class, *self.daemon_args()]

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
