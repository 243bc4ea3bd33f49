"""A single-node Apache Kafka broker in KRaft mode (broker and controller in one JVM)."""

from __future__ import annotations

import base64
import subprocess
import uuid

from fink import jvm
from fink.errors import ServiceError
from fink.services.process import Service, java_executable

LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    RollingFile:
      name: STDOUT
      fileName: "${sys:fink.log.file}"
      filePattern: "${sys:fink.log.file}.%i"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      Policies:
        SizeBasedTriggeringPolicy:
          size: "20 MB"
      DefaultRolloverStrategy:
        max: 3
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka
        level: INFO
      - name: org.apache.kafka
        level: WARN
      - name: kafka.request.logger
        level: WARN
      - name: state.change.logger
        level: WARN
"""


def cluster_id(random_bytes=lambda: uuid.uuid4().bytes) -> str:
    """A new KRaft cluster id: 16 random bytes in URL-safe base64, as Kafka's own ``Uuid``.

    Like Kafka's, never one that starts with "-": the storage tool's argument parser would
    take it for an option ("argument --cluster-id/-t: expected one argument"), one time in 64.
    """
    while True:
        text = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class KafkaService(Service):
    """Kafka 4.x in KRaft mode, listening on loopback only.

    Notes
    -----
    Three listeners: ``PLAINTEXT`` (``kafka_port``) for the broker's own stages, the
    simulator and the survey feed; ``CONTROLLER`` for KRaft; ``SASL_PLAINTEXT``
    (``kafka_sasl_port``) for users, who authenticate with SCRAM-SHA-512 and may only do
    what ACLs grant them (:mod:`fink.access`). The internal listeners carry no credentials,
    so their (anonymous) principal is the super user; they must never be reachable from
    outside the machine, which the loopback-only ``host`` guarantees.
    """

    name = "kafka"

    def ports(self) -> dict[str, int]:
        return {"kafka_port": self.config.kafka_port, "kafka_controller_port": self.config.kafka_controller_port,
                "kafka_sasl_port": self.config.kafka_sasl_port}

    @property
    def data_dir(self):
        return self.home / "data" / "kafka"

    def properties(self) -> str:
        c = self.config
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
            f"listeners=PLAINTEXT://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port},"
            f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            f"advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port},SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            # users: SCRAM-SHA-512 (what the Fink client speaks), credentials kept by KRaft
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            # ACLs: a user may only do what is granted; the internal listeners are the super user
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=false",
            f"log.dirs={self.data_dir}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            # one partition for the groups' offsets and one for the transactions' states (the default
            # 50 each are created at the first group join and the first transaction, seconds on 2 cores)
            "offsets.topic.num.partitions=1",
            "transaction.state.log.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # ZTF cutouts make alerts 50-80 KB; an oversized one must still be accepted up to 10 MB
            "message.max.bytes=10485760",
            "replica.fetch.max.bytes=10485760",
            "auto.create.topics.enable=true",
            "",
        ])

    def prepare(self) -> None:
        conf = self.run_dir / "server.properties"
        conf.write_text(self.properties())
        (self.run_dir / "log4j2.yaml").write_text(LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._run_tool(["kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(conf)])

    def _run_tool(self, args: list[str]) -> None:
        cmd = [java_executable(), "-Xmx256m", f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.yaml'}",
               f"-Dfink.log.file={self.log_file}",
               "-cp", jvm.classpath("kafka"), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ServiceError(f"kafka: storage format failed ({' '.join(args[:2])}):\n{proc.stdout}{proc.stderr}")

    def java_args(self) -> list[str]:
        heap = self.config.kafka_heap
        return [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.yaml'}",
                f"-Dkafka.logs.dir={self.home / 'logs'}",
                "-cp", jvm.classpath("kafka"), "kafka.Kafka", str(self.run_dir / "server.properties")]

    def ready(self) -> bool:
        """A metadata request answered by the broker."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.config.kafka_bootstrap, "socket.timeout.ms": 2000,
                             "log_level": 0})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:  # noqa: BLE001 - any failure of the probe means "not yet"
            return False
