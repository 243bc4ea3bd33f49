"""A standalone HBase (master, in-process region server and ZooKeeper) and its Thrift gateway.

Notes
-----
Standalone mode keeps the tables on the local file system under ``$FINK_HOME/data/hbase``;
it is the mode HBase documents for a single machine. ``happybase`` speaks Thrift 1, so the
gateway is ``org.apache.hadoop.hbase.thrift.ThriftServer`` with its defaults (binary
protocol, unframed transport), which are happybase's defaults too.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from fink.ops.services.service import Service
from fink.processes import port_open
from fink.runtime import jvm

# HBase 2.6 on Java 17 needs these, as its own bin/hbase script adds them.
JAVA17_OPENS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    *(f"--add-opens=java.base/{pkg}=ALL-UNNAMED" for pkg in (
        "java.lang", "java.lang.reflect", "java.io", "java.nio", "java.util", "java.util.concurrent",
        "jdk.internal.misc", "sun.nio.ch")),
    "--add-exports=java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "-Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true",
]

LOG4J = """\
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.RollingFileAppender
log4j.appender.console.File=${fink.log.file}
log4j.appender.console.MaxFileSize=20MB
log4j.appender.console.MaxBackupIndex=3
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{2}: %m%n
log4j.logger.org.apache.zookeeper=WARN
log4j.logger.org.apache.hadoop=WARN
log4j.logger.org.apache.hadoop.hbase=INFO
log4j.logger.org.apache.hadoop.hbase.zookeeper=WARN
"""


class _HBaseBase(Service):
    @property
    def conf_dir(self):
        return self.home / "services" / "hbase-conf"

    def site(self) -> dict[str, str]:
        c, data = self.config, self.home / "data" / "hbase"
        return {
            "hbase.cluster.distributed": "false",
            "hbase.rootdir": (data / "root").as_uri(),
            "hbase.tmp.dir": str(data / "tmp"),
            "hbase.zookeeper.property.dataDir": str(data / "zookeeper"),
            "hbase.zookeeper.quorum": c.host,
            "hbase.zookeeper.property.clientPort": str(c.hbase_zookeeper_port),
            "hbase.zookeeper.property.clientPortAddress": c.host,
            "hbase.master.hostname": c.host,
            "hbase.regionserver.hostname": c.host,
            "hbase.master.ipc.address": c.host,
            "hbase.regionserver.ipc.address": c.host,
            "hbase.master.port": str(c.hbase_master_port),
            "hbase.regionserver.port": str(c.hbase_regionserver_port),
            # no web UIs: fewer ports, less memory
            "hbase.master.info.port": "-1",
            "hbase.regionserver.info.port": "-1",
            "hbase.thrift.info.port": "-1",
            # the local file system has no hflush/hsync; HBase refuses to start without this
            "hbase.unsafe.stream.capability.enforce": "false",
            "hbase.regionserver.thrift.ipaddress": c.host,
            "hbase.regionserver.thrift.port": str(c.thrift_port),
        }

    def prepare(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        props = "\n".join(f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>"
                          for k, v in self.site().items())
        site = f"<?xml version=\"1.0\"?>\n<configuration>\n{props}\n</configuration>\n"
        (self.conf_dir / "hbase-site.xml").write_text(site)
        (self.conf_dir / "log4j.properties").write_text(LOG4J)

    def _java(self, heap: str, main: list[str]) -> list[str]:
        return [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                "-Djava.net.preferIPv4Stack=true", *JAVA17_OPENS,
                f"-Dhbase.log.dir={self.home / 'logs'}",
                "-cp", jvm.classpath("hbase", self.conf_dir), *main]


class HBaseService(_HBaseBase):
    """HBase master with its in-process region server and ZooKeeper."""

    name = "hbase"

    def ports(self) -> dict[str, int]:
        c = self.config
        return {"hbase_zookeeper_port": c.hbase_zookeeper_port, "hbase_master_port": c.hbase_master_port,
                "hbase_regionserver_port": c.hbase_regionserver_port}

    def java_args(self) -> list[str]:
        return self._java(self.config.hbase_heap, ["org.apache.hadoop.hbase.master.HMaster", "start"])

    def ready(self) -> bool:
        """The master and region server accept connections (Thrift's probe checks the rest)."""
        return all(port_open(self.config.host, port) for port in self.ports().values())


class ThriftService(_HBaseBase):
    """The HBase Thrift 1 gateway, which happybase talks to."""

    name = "thrift"

    def ports(self) -> dict[str, int]:
        return {"thrift_port": self.config.thrift_port}

    def java_args(self) -> list[str]:
        c = self.config
        return self._java(c.thrift_heap, ["org.apache.hadoop.hbase.thrift.ThriftServer",
                                          "-b", c.host, "-p", str(c.thrift_port), "start"])

    def ready(self) -> bool:
        """A Thrift ``getTableNames`` answered, which needs the master and ``hbase:meta`` up."""
        import happybase

        try:
            conn = happybase.Connection(self.config.host, port=self.config.thrift_port, timeout=5000,
                                        autoconnect=True)
        except Exception:  # noqa: BLE001 - not listening yet
            return False
        try:
            conn.tables()
            return True
        except Exception:  # noqa: BLE001 - listening, but HBase not ready yet
            return False
        finally:
            conn.close()
