"""Resolution of the JVM artifacts: skipped when done, clear when Maven fails, no duplicate jars."""

import os
import stat
from pathlib import Path

import pytest

from fink.errors import JvmArtifactsError
from fink.runtime import jvm


def fake_mvn(tmp_path: Path, body: str) -> str:
    script = tmp_path / "mvn"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_fetch_copies_stamps_and_second_run_does_not_call_maven(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    # a stand-in for Maven that "resolves" one jar into -DoutputDirectory and logs each call
    mvn = fake_mvn(tmp_path, f'echo "$@" >> {calls}\nfor a in "$@"; do case $a in -DoutputDirectory=*) '
                             'd=${a#-DoutputDirectory=}; mkdir -p "$d"; touch "$d/x-1.0.jar";; esac; done\n')
    assert jvm.fetch(("kafka",), mvn=mvn) == ["kafka"]
    assert [p.name for p in jvm.jars("kafka")] == ["x-1.0.jar"]
    assert jvm.fetch(("kafka",), mvn=mvn) == []
    assert len(calls.read_text().splitlines()) == 1
    assert "-P kafka" in calls.read_text()


def test_maven_failure_reports_command_and_leaves_nothing_half_done(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path / "cache"))
    mvn = fake_mvn(tmp_path, 'echo "[ERROR] Could not find artifact org.apache.hbase:hbase-thrift:jar:9.9"; exit 1\n')
    with pytest.raises(JvmArtifactsError, match="(?s)'hbase'.*dependency:copy-dependencies.*hbase-thrift:jar:9.9"):
        jvm.fetch(("hbase",), mvn=mvn)
    assert not (tmp_path / "cache" / "hbase").exists()
    assert not any((tmp_path / "cache").glob(".hbase-*"))


def test_unresolved_component_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path))
    with pytest.raises(JvmArtifactsError, match="make jvm"):
        jvm.jars("spark")


def test_spark_connectors_do_not_duplicate_pyspark_jars():
    if not jvm.is_resolved("spark"):
        pytest.skip("JVM artifacts not resolved (run `make jvm`)")
    import pyspark

    bundled = {jvm.split_jar_name(p.stem)[0] for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    ours = {jvm.split_jar_name(p.stem)[0]: p.name for p in jvm.jars("spark")}
    assert not set(ours) & bundled, f"also shipped by pyspark: {set(ours) & bundled}"
    version = pyspark.__version__
    assert f"spark-sql-kafka-0-10_2.13-{version}.jar" in ours.values()
    assert f"spark-avro_2.13-{version}.jar" in ours.values()


def test_versions_lists_resolved_artifacts():
    if not all(jvm.is_resolved(c) for c in jvm.COMPONENTS):
        pytest.skip("JVM artifacts not resolved (run `make jvm`)")
    versions = jvm.versions()
    assert versions["kafka"]["kafka_2.13"].startswith("4.")
    assert versions["hbase"]["hbase-thrift"] == versions["hbase"]["hbase-server"]
    assert versions["spark"]["spark-avro_2.13"] == versions["spark"]["spark-sql-kafka-0-10_2.13"]


def test_split_jar_name():
    assert jvm.split_jar_name("hbase-thrift-2.6.1") == ("hbase-thrift", "2.6.1")
    assert jvm.split_jar_name("spark-sql-kafka-0-10_2.13-4.2.0") == ("spark-sql-kafka-0-10_2.13", "4.2.0")
    assert jvm.split_jar_name("HikariCP-java7-2.4.12") == ("HikariCP-java7", "2.4.12")


def test_the_class_archive_is_named_for_each_jar_s_size_and_time(tmp_path, monkeypatch):
    """A JVM refuses an archive whose jars changed ("A jar file is not the one used while building the
    shared archive file", CI's virtualenv made again beside a kept cache): a jar touched is a new name."""
    from fink.runtime import class_archive

    jar = tmp_path / "spark-avro_2.13-4.2.0.jar"
    jar.write_bytes(b"PK")
    monkeypatch.setattr(jvm, "jars", lambda component: [jar])
    monkeypatch.setenv("FINK_JVM_CACHE", str(tmp_path / "cache"))
    first = class_archive.archive_path()
    assert class_archive.archive_path() == first
    os.utime(jar, ns=(jar.stat().st_atime_ns, jar.stat().st_mtime_ns + 1_000_000_000))
    assert class_archive.archive_path() != first
    assert class_archive.java_options() == ""  # none for this setup yet: the driver starts without


def test_a_new_class_archive_deletes_all_but_the_newest_earlier_one(tmp_path):
    from fink.runtime import class_archive

    old = [tmp_path / f"classes-{i}.jsa" for i in range(3)]
    for age, path in enumerate(old):
        path.write_bytes(b"x")
        os.utime(path, (1_000_000 - age, 1_000_000 - age))
    keep = tmp_path / "classes-new.jsa"
    keep.write_bytes(b"x")
    class_archive._prune(keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes-0.jsa", "classes-new.jsa"]
