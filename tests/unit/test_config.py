import os
from pathlib import Path

import pytest

from fink.config import FinkConfig, ServicesConfig, secret
from fink.errors import ConfigError


def test_unknown_key_is_an_error_naming_it_and_the_close_match():
    with pytest.raises(ConfigError, match=r"unknown key 'kafka_bootstrp' \(did you mean 'kafka_bootstrap'\?\)"):
        FinkConfig.from_mapping({"kafka_bootstrp": "127.0.0.1:9092"}, source="conf/x.yaml")


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match="'spark_conf' must be of type dict, got str"):
        FinkConfig.from_mapping({"spark_conf": "spark.executor.memory=4g"})


def test_bool_is_not_accepted_as_a_port():
    with pytest.raises(ConfigError, match="'kafka_port' must be of type int, got bool"):
        ServicesConfig.from_mapping({"kafka_port": True})


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:abc", ":9092", "a:1,b"])
def test_bootstrap_must_be_host_port(value):
    with pytest.raises(ConfigError, match="kafka_bootstrap"):
        FinkConfig.from_mapping({"kafka_bootstrap": value})


def test_spark_conf_keys_must_be_spark_settings():
    with pytest.raises(ConfigError, match="spark_conf key 'executor.memory'"):
        FinkConfig.from_mapping({"spark_conf": {"executor.memory": "1g"}})


def test_valid_mapping_round_trips():
    cfg = FinkConfig.from_mapping({"kafka_bootstrap": "k1:9092,k2:9092", "spark_conf": {"spark.x": 1}})
    assert cfg.kafka_bootstrap == "k1:9092,k2:9092"
    assert FinkConfig.from_mapping(cfg.to_dict()) == cfg


def test_from_namespace_picks_only_its_fields():
    ns = {"kafka_bootstrap": "h:1", "topic": "ztf", "duration": 3.0}
    assert FinkConfig.from_namespace(ns).kafka_bootstrap == "h:1"


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka_port: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        ServicesConfig.from_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        ServicesConfig.from_yaml(bad)


def test_services_must_listen_on_loopback():
    with pytest.raises(ConfigError, match="loopback"):
        ServicesConfig.from_mapping({"host": "0.0.0.0"})


def test_services_ports_must_differ():
    with pytest.raises(ConfigError, match="'thrift_port' and 'kafka_port' are both 9092"):
        ServicesConfig.from_mapping({"thrift_port": 9092})


def test_services_heap_format():
    with pytest.raises(ConfigError, match="kafka_heap"):
        ServicesConfig.from_mapping({"kafka_heap": "lots"})


def test_services_yaml_in_home_is_read(tmp_path):
    (tmp_path / "services.yaml").write_text("kafka_port: 19092\n")
    assert ServicesConfig.load(tmp_path).kafka_bootstrap == "127.0.0.1:19092"
    (tmp_path / "services.yaml").write_text("kafka_prot: 19092\n")
    with pytest.raises(ConfigError, match="unknown key 'kafka_prot'"):
        ServicesConfig.load(tmp_path)


def test_secret_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    monkeypatch.setenv("FINK_KAFKA_PASSWORD", "s3cret")
    assert secret("kafka_password") == "s3cret"


def test_secret_file_must_be_private(monkeypatch, tmp_path):
    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    monkeypatch.delenv("FINK_KAFKA_PASSWORD", raising=False)
    assert secret("kafka_password") is None
    path = tmp_path / "secrets" / "kafka_password"
    path.parent.mkdir()
    path.write_text("from-file\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        secret("kafka_password")
    os.chmod(path, 0o600)
    assert secret("kafka_password") == "from-file"


def test_sasl_options_only_with_both_credentials(monkeypatch, tmp_path):
    from fink.io import kafka

    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    monkeypatch.delenv("FINK_KAFKA_PASSWORD", raising=False)
    monkeypatch.setenv("FINK_KAFKA_USERNAME", "alice")
    assert "security.protocol" not in kafka.client_config("h:1")
    monkeypatch.setenv("FINK_KAFKA_PASSWORD", "pw")
    conf = kafka.client_config("h:1")
    assert conf["security.protocol"] == "SASL_PLAINTEXT" and conf["sasl.mechanism"] == "SCRAM-SHA-512"
    opts = kafka.spark_options("h:1")
    assert 'username="alice" password="pw"' in opts["kafka.sasl.jaas.config"]


def test_a_location_is_a_local_folder_or_none_for_another_file_system(tmp_path):
    from fink.config import local_path

    assert local_path(str(tmp_path / "ck")) == tmp_path / "ck"
    assert local_path("relative/ck") == Path("relative/ck")
    assert local_path(f"file://{tmp_path}/ck") == local_path(f"file:{tmp_path}/ck") == tmp_path / "ck"
    assert local_path("hdfs://namenode:8020/fink/ck") is None and local_path("s3a://bucket/fink") is None


def test_internal_clients_authenticate_as_the_service_account_and_others_do_not(monkeypatch, tmp_path):
    from fink.config import SERVICE_ACCOUNT, service_password
    from fink.io import kafka

    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    monkeypatch.delenv("FINK_KAFKA_USERNAME", raising=False)
    monkeypatch.delenv("FINK_KAFKA_PASSWORD", raising=False)
    monkeypatch.delenv("FINK_KAFKA_SERVICE", raising=False)  # the test session's: not this home's
    (tmp_path / "services.yaml").write_text("kafka_port: 19092\n")
    assert "security.protocol" not in kafka.client_config("127.0.0.1:19092")  # no secret yet: plaintext
    password = service_password(create=True)
    assert oct(os.stat(tmp_path / "secrets" / "kafka_service").st_mode & 0o777) == "0o600"
    assert service_password(create=True) == password  # made once
    for internal in ("127.0.0.1:19092", "localhost:19092"):
        conf = kafka.client_config(internal, **{"group.id": "g"})
        assert (conf["sasl.username"], conf["sasl.password"], conf["group.id"]) == (SERVICE_ACCOUNT, password, "g")
        assert f'username="{SERVICE_ACCOUNT}" password="{password}"' in kafka.spark_options(internal)[
            "kafka.sasl.jaas.config"]
    for other in ("127.0.0.1:19094", "broker.example.org:19092"):  # the users' listener, another broker
        assert "sasl.password" not in kafka.client_config(other)
        assert "kafka.sasl.jaas.config" not in kafka.spark_options(other)


def test_driver_java_options_from_the_environment_are_appended_to_fink_s_own(monkeypatch):
    from fink.runtime.session import DRIVER_JAVA_OPTIONS, spark_conf

    monkeypatch.delenv(DRIVER_JAVA_OPTIONS, raising=False)
    plain = spark_conf(FinkConfig())["spark.driver.extraJavaOptions"]
    monkeypatch.setenv(DRIVER_JAVA_OPTIONS, "-XX:TieredStopAtLevel=1")
    quick = spark_conf(FinkConfig())["spark.driver.extraJavaOptions"]
    assert quick == plain + " -XX:TieredStopAtLevel=1" and "-Dlog4j.configurationFile=" in plain


def test_the_spark_secret_is_made_once_private_and_kept_off_every_command_line(monkeypatch, tmp_path):
    from fink.config import spark_auth_file
    from fink.ops.services.spark_cluster import SparkMasterService, SparkWorker1Service
    from fink.runtime.session import authentication_file

    monkeypatch.setenv("FINK_HOME", str(tmp_path))
    monkeypatch.delenv("FINK_SPARK_AUTH_FILE", raising=False)
    assert spark_auth_file() is None
    local = {"spark.master": "local[2]", "spark.authenticate": "true"}
    assert authentication_file(local) is None  # local mode makes its own secret
    cluster = {"spark.master": "spark://127.0.0.1:7077", "spark.authenticate": "true"}
    with pytest.raises(ConfigError, match="fink services start spark"):
        authentication_file(cluster)

    cfg = ServicesConfig()
    master, worker = SparkMasterService(cfg, tmp_path), SparkWorker1Service(cfg, tmp_path)
    args = master.java_args() + worker.java_args()  # made by the first daemon's arguments
    path = spark_auth_file()
    assert path == tmp_path / "secrets" / "spark-auth.properties"
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o777 == 0o700
    props = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    assert props["spark.authenticate"] == "true" and len(props["spark.authenticate.secret"]) == 64
    assert args.count("--properties-file") == 2 and str(path) in args
    assert not any(props["spark.authenticate.secret"] in a for a in args)
    text = path.read_text()
    assert master.java_args()[-1] == str(path) and path.read_text() == text  # made once, then kept
    assert authentication_file(cluster) == path
    assert authentication_file({**cluster, "spark.authenticate": "false"}) is None
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        authentication_file(cluster)
    os.chmod(path, 0o600)
    other = tmp_path / "elsewhere.properties"  # a driver whose FINK_HOME is not the cluster's
    monkeypatch.setenv("FINK_SPARK_AUTH_FILE", str(other))
    assert spark_auth_file() is None
    with pytest.raises(ConfigError, match="FINK_SPARK_AUTH_FILE names .*elsewhere.properties"):
        master.java_args()  # never made there: it is the cluster's to make
    assert not other.exists()
    other.write_text(path.read_text())
    other.chmod(0o600)
    assert authentication_file(cluster) == other
