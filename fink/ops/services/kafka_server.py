"""A single-node Apache Kafka broker in KRaft mode (broker and controller in one JVM)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from fink.config import SERVICE_ACCOUNT, SERVICE_SECRET, ServicesConfig, service_password
from fink.errors import ServiceError
from fink.io import kafka
from fink.log import logger
from fink.ops.services.service import Service
from fink.processes import java_executable
from fink.runtime import jvm

#: SCRAM iterations of the service account (Kafka's minimum is 4096)
SCRAM_ITERATIONS = 8192
#: seconds of refused logins after which a starting broker is given up (its storage lacks the account)
REFUSED_FOR = 15.0

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
    """Kafka 4.x in KRaft mode, listening on loopback only, every listener authenticated.

    Notes
    -----
    Three listeners. ``INTERNAL`` (``kafka_port``) for the broker's own stages, the
    simulator, the survey feed and the operator's commands, and the broker's traffic with
    itself: SASL/SCRAM-SHA-512 as the service account :data:`~fink.config.SERVICE_ACCOUNT`,
    the only super user. ``CONTROLLER`` (``kafka_controller_port``) for KRaft: SASL/PLAIN as
    the same account, since a KRaft controller cannot check SCRAM (those credentials live in
    the metadata it serves), its password in ``server.properties`` (mode 0600).
    ``SASL_PLAINTEXT`` (``kafka_sasl_port``) for users, who authenticate with SCRAM-SHA-512
    and may only do what ACLs grant them (:mod:`fink.io.access`).

    The account's password is ``$FINK_HOME/secrets/kafka_service`` (0600, made at the first
    start). Its SCRAM credential is written into the storage when it is formatted; the
    argument goes through an ``@file`` (0600, removed at once), never a command line.
    A storage formatted without it (before the internal listeners were authenticated), or
    after the password file was replaced, is migrated at the next start: the broker runs once
    with the former unauthenticated listeners, the credential is set, the broker stops.
    """

    name = "kafka"

    def __init__(self, config=None, home=None):
        super().__init__(config, home)
        self._legacy = False  # True while a storage formatted without the account is migrated
        self._refused_since: float | None = None  # when the broker first refused the account's login

    def ports(self) -> dict[str, int]:
        return {"kafka_port": self.config.kafka_port, "kafka_controller_port": self.config.kafka_controller_port,
                "kafka_sasl_port": self.config.kafka_sasl_port}

    @property
    def data_dir(self):
        return self.home / "data" / "kafka"

    @property
    def account_file(self):
        """What the storage holds of the service account: its name and its password's digest."""
        return self.run_dir / "account.json"

    def password(self) -> str:
        return service_password(self.home, create=True) or ""  # never empty: created if missing

    def properties(self, legacy: bool = False) -> str:
        """``server.properties``; ``legacy``: the unauthenticated listeners of a migration."""
        return server_properties(self.config, self.data_dir, None if legacy else self.password())

    @property
    def conf_file(self):
        return self.run_dir / ("migration.properties" if self._legacy else "server.properties")

    def prepare(self) -> None:
        if self._legacy:  # the migration's own start
            _private_write(self.conf_file, self.properties(legacy=True))
            return
        password = self.password()
        _private_write(self.conf_file, self.properties())
        (self.run_dir / "log4j2.yaml").write_text(LOG4J2)
        if not (self.data_dir / "meta.properties").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            scram = f"SCRAM-SHA-512=[name={SERVICE_ACCOUNT},iterations={SCRAM_ITERATIONS},password={password}]"
            run_tool(self.run_dir, self.log_file,
                     ["kafka.tools.StorageTool", "format", "-t", cluster_id(), "-c", str(self.conf_file)],
                     secret_args=["--add-scram", scram], secret=password)
            self._record_account(password)
        elif self._account_recorded() != _digest(password):
            self._migrate(password)

    def _record_account(self, password: str) -> None:
        self.account_file.write_text(json.dumps({"account": SERVICE_ACCOUNT, "sha256": _digest(password)}))

    def _account_recorded(self) -> str | None:
        try:
            data = json.loads(self.account_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data.get("sha256") if data.get("account") == SERVICE_ACCOUNT else None

    def _migrate(self, password: str) -> None:
        """Give a storage formatted without the service account its SCRAM credential."""
        logger.warning("kafka: the storage in %s has no credential for %s (formatted by an earlier version, or "
                       "its password file replaced): setting it, with one start of the broker on its former "
                       "unauthenticated listeners", self.data_dir, SERVICE_ACCOUNT)
        self._legacy = True
        try:
            Service.start(self)
            try:
                set_credential(self.config, password)
            except ServiceError:
                raise
            except Exception as exc:  # noqa: BLE001 - confluent's KafkaException, named in the error
                raise ServiceError(f"kafka: could not set the credential of {SERVICE_ACCOUNT} on the storage in "
                                   f"{self.data_dir}: {exc}") from exc
            finally:
                Service.stop(self)
        finally:
            self._legacy = False
            self.conf_file.with_name("migration.properties").unlink(missing_ok=True)
        self._record_account(password)

    def java_args(self) -> list[str]:
        heap = self.config.kafka_heap
        return [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.yaml'}",
                f"-Dkafka.logs.dir={self.home / 'logs'}",
                "-cp", jvm.classpath("kafka"), "kafka.Kafka", str(self.conf_file)]

    def ready(self) -> bool:
        """A metadata request answered by the broker, to the service account.

        A refused login is not "not yet": after :data:`REFUSED_FOR` seconds of them the broker
        is stopped and the error says why, rather than waiting out ``start_timeout``.
        """
        from confluent_kafka.admin import AdminClient

        if self._legacy:
            conf = {"bootstrap.servers": self.config.kafka_bootstrap}
        else:
            conf = kafka.sasl_config(self.config.kafka_bootstrap, SERVICE_ACCOUNT, self.password())
        errors: list = []
        admin = AdminClient({**conf, "socket.timeout.ms": 2000, "log_level": 0, "error_cb": errors.append})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:  # noqa: BLE001 - any failure of the probe means "not yet", but a refusal
            admin.poll(0)  # serves error_cb
            refused = [e for e in errors if "AUTHENTICATION" in e.name()]
            if not refused:
                self._refused_since = None
                return False
            now = time.monotonic()
            self._refused_since = self._refused_since or now
            if now - self._refused_since < REFUSED_FOR:
                return False
            self.stop()
            raise ServiceError(
                f"kafka: the broker refuses the service account {SERVICE_ACCOUNT} ({refused[-1]}): the password "
                f"in {self.home / 'secrets' / SERVICE_SECRET} is not the one its storage ({self.data_dir}) holds. "
                f"Remove {self.account_file} and start again to set it") from None


def server_properties(c: ServicesConfig, data_dir: Path, password: str | None) -> str:
    """The broker's ``server.properties``, its data in ``data_dir``; without ``password`` (the
    service account's), the unauthenticated listeners of a migration."""
    if password is None:
        security = [
            f"listeners=PLAINTEXT://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port},"
            f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            f"advertised.listeners=PLAINTEXT://{c.host}:{c.kafka_port},"
            f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "super.users=User:ANONYMOUS",
        ]
    else:
        account = SERVICE_ACCOUNT
        security = [
            f"listeners=INTERNAL://{c.host}:{c.kafka_port},CONTROLLER://{c.host}:{c.kafka_controller_port},"
            f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            f"advertised.listeners=INTERNAL://{c.host}:{c.kafka_port},"
            f"SASL_PLAINTEXT://{c.host}:{c.kafka_sasl_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=INTERNAL",
            "listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,"
            "SASL_PLAINTEXT:SASL_PLAINTEXT",
            # the stages and the broker itself: SCRAM, the account's credential kept by KRaft
            "listener.name.internal.sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            "listener.name.internal.scram-sha-512.sasl.jaas.config="
            f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{account}" '
            f'password="{password}";',
            # KRaft: PLAIN, the one credential in this file (the controller cannot read SCRAM's)
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config="
            f'org.apache.kafka.common.security.plain.PlainLoginModule required username="{account}" '
            f'password="{password}" user_{account}="{password}";',
            # users: SCRAM-SHA-512 (what the Fink client speaks), credentials kept by KRaft
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"super.users=User:{account}",
        ]
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{c.host}:{c.kafka_controller_port}",
        *security,
        # ACLs: a user may only do what is granted
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"log.dirs={data_dir}",
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


def run_tool(run_dir: Path, log_file: Path, args: list[str], secret_args: list[str] = (),
             secret: str = "") -> None:
    """Run a Kafka tool; ``secret_args`` go through a 0600 ``@file`` (one argument a line, read by
    the tool's own argument parser), not the command line; ``secret`` is masked in its errors."""
    cmd = [java_executable(), "-Xmx256m", f"-Dlog4j2.configurationFile={run_dir / 'log4j2.yaml'}",
           f"-Dfink.log.file={log_file}",
           "-cp", jvm.classpath("kafka"), *args]
    argfile = run_dir / "tool.args"
    if secret_args:
        _private_write(argfile, "\n".join(secret_args))
        cmd.append(f"@{argfile}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        argfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        raise ServiceError(f"kafka: storage format failed ({' '.join(args[:2])}):\n"
                           + (out.replace(secret, "***") if secret else out))


def set_credential(config: ServicesConfig, password: str) -> None:
    """Set the service account's SCRAM credential on a broker that runs unauthenticated (a
    migration's start); done once the broker lets the account log in (on the users' SCRAM
    listener, which the former layout had too), not merely once the credential is described."""
    from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    admin = AdminClient({"bootstrap.servers": config.kafka_bootstrap, "log_level": 0})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(SERVICE_ACCOUNT, info, password.encode())])
    for future in futures.values():
        future.result(30)
    login = AdminClient(kafka.sasl_config(config.kafka_users_bootstrap, SERVICE_ACCOUNT, password,
                                          **{"log_level": 0}))
    deadline = time.monotonic() + 30
    while True:
        try:
            login.list_topics(timeout=2)
            break
        except Exception:  # noqa: BLE001 - not applied yet
            if time.monotonic() > deadline:
                raise ServiceError(f"kafka: the broker does not accept the credential of "
                                   f"{SERVICE_ACCOUNT} 30 s after it was set") from None
            time.sleep(0.2)


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _private_write(path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it may hold a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
