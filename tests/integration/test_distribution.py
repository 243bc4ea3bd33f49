"""distribution on the real broker: the community client decodes what was sent, access
control, exactly-once after restarts, and 1 versus 50 filters."""

import json
import math
import sys
import time
import types
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import once
from test_raw2science import science
from test_stream2raw import SAMPLE, run

from fink.config import FinkConfig, ServicesConfig
from fink.filters import alert_filter
from fink.filters.filter_api import label
from fink.io import access, kafka
from fink.io.delivery import BatchPublisher
from fink.runtime import streaming
from fink.science.modules import BUILTIN
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.stages import distribution as dist
from fink.stages import distribution_sink
from fink.stages.topics import CUTOUTS

pytestmark = [pytest.mark.integration, pytest.mark.spark]
CATALOGUE = str(Path(__file__).resolve().parents[2] / "datasim" / "sample_night" / "catalogue.csv")
ROOT_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _sample_science(tmp: Path, spark, kafka_bootstrap) -> dict:
    topic = f"dist_sample_{uuid.uuid4().hex[:8]}"
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    run(spark, kafka_bootstrap, topic, tmp, max_offsets=60)
    paths, totals = science(spark, tmp, modules=BUILTIN, max_files_per_trigger=1,
                            module_params={"fink.science.modules.xmatch:crossmatch": {"catalogue_path": CATALOGUE}})
    assert totals["balanced"] and totals["batches"] >= 3
    return {"folder": str(tmp)}


@pytest.fixture(scope="session")
def sample_science(spark, kafka_bootstrap) -> Path:
    """The sample night through stream2raw and raw2science (several science files), made once for
    the run (test_distribution and test_archive, on either worker: :func:`conftest.once`); tests
    write only their own checkpoints and outputs beside it."""
    return Path(once("sample_science", lambda tmp: _sample_science(tmp, spark, kafka_bootstrap))["folder"])


def distribute(spark, data_dir, filters, checkpoint=None, stop_after=None, **options):
    """Run the stage (availableNow) and return (reconciled totals, sink)."""
    fink = FinkConfig(kafka_bootstrap=ServicesConfig.load().kafka_bootstrap, data_dir=str(data_dir))
    options.setdefault("watchlists", "none")  # not the lists a user of this machine registered in $FINK_HOME
    cfg = dist.DistributionConfig(filters=filters, checkpoint=checkpoint or str(data_dir / f"ck_{uuid.uuid4().hex}"),
                                  **options)
    writer = dist.build(spark, cfg, fink)
    query = streaming.start(writer.trigger(availableNow=True), dist.QUERY_NAME)

    def enough(queries):
        if stop_after is not None and len(list(writer.fink_sink.delivered)) >= stop_after:
            for q in queries:
                q.stop()

    result = streaming.run_until([query], duration=300, poll=0.2, on_poll=enough)
    return dist.reconcile(result.progress[dist.QUERY_NAME], writer.fink_sink), writer.fink_sink


def consume(topics, group=None, **conf):
    """Every message of ``topics`` up to their ends when called: {topic: [(key, value)]} (committed ones
    only with ``isolation.level=read_committed``). A reader's position passes a transaction's commit
    marker once it has polled past it, so it reaches each end; 4 s of silence end it too."""
    bootstrap = ServicesConfig.load().kafka_bootstrap
    ends = {}
    for t in topics:
        try:
            ends.update({(t, p): end for p, end in kafka.end_offsets(bootstrap, t).items() if end > 0})
        except kafka.KafkaError:  # no such topic (a filter that sent nothing): nothing to read there
            pass
    c = Consumer(kafka.client_config(bootstrap, **{
        "auto.offset.reset": "earliest", "group.id": group or f"t-{uuid.uuid4().hex}", **conf}))
    assigned = []
    c.subscribe(list(topics), on_assign=lambda consumer, parts: assigned.append(parts))
    out, idle, deadline = {t: [] for t in topics}, 0, time.monotonic() + 120
    while idle < 8 and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is None:
            idle += bool(assigned)  # idle only counts once the group gave us the partitions
            if assigned and all(p.offset >= ends.get((p.topic, p.partition), 0)
                                for p in c.position([TopicPartition(t, p) for t, p in ends])):
                break
            continue
        assert not msg.error(), msg.error()
        idle = 0
        out[msg.topic()].append((msg.key(), msg.value()))
    c.close()
    return out


def science_rows(spark, data_dir):
    from pyspark.sql import functions as F

    from fink.stages import raw2science as r2s

    df = r2s.read_science(spark, str(data_dir / "science"))  # the stage's rows: raw alerts joined
    ts = [f.name for f in df.schema.fields if f.dataType.simpleString() == "timestamp"]
    df = df.select(*[F.unix_micros(c).alias(c) if c in ts else F.col(c) for c in df.columns if c != "night"])
    return {r["candid"]: r.asDict(recursive=True) for r in df.collect()}, ts


def same(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def micros(dt):
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def test_the_community_client_decodes_every_alert_equal_to_the_science_archive(spark, sample_science):
    from fink_client.consumer import AlertConsumer

    sfx = uuid.uuid4().hex[:6]
    everything, light = f"all_{sfx}", f"light_{sfx}"
    totals, _ = distribute(spark, sample_science, {everything: "fink.filters.builtin:bright",
                                                   light: "fink.filters.builtin:bright"},
                           filter_params={everything: {"limit": 99.0}, light: {"limit": 99.0}},
                           topic_options={light: {"cutouts": False}})
    assert totals["balanced"] and totals["alerts"] == 207 and totals["topics"][everything]["delivered"] == 207
    rows, ts = science_rows(spark, sample_science)
    # a user granted the topic reads it with fink-client, unchanged, on the SASL listener
    services = ServicesConfig.load()
    user = f"u{sfx}"
    password = access.add_user(services.kafka_bootstrap, user).read_text().strip()
    try:
        for topic in (everything, light):
            access.grant(services.kafka_bootstrap, user, topic)
            client = AlertConsumer([topic], {"bootstrap.servers": services.kafka_users_bootstrap, "username": user,
                                             "password": password, "group.id": f"{user}-check"}, survey="ztf")
            got, deadline = [], time.monotonic() + 120  # the group join and SASL login come first
            while len(got) < len(rows) and time.monotonic() < deadline:
                if (msg := client.poll(5))[0] is not None:
                    got.append(msg[1])
            while (msg := client.poll(2))[0] is not None:  # and nothing more than expected
                got.append(msg[1])
            client.close()
            assert sorted(a["candid"] for a in got) == sorted(rows)
            for alert in got:
                want = dict(rows[alert["candid"]])
                if topic == light:
                    for c in CUTOUTS:
                        assert c not in alert
                        want.pop(c)
                # this broker's columns under Fink's names (the survey's fink_names)
                want["cdsxmatch"] = want["xm_type"] or "Unknown"
                want["rf_snia_vs_nonia"] = 0.0 if want["snia_prob"] is None else want["snia_prob"]
                alert = {k: micros(v) if k in ts and v is not None else v for k, v in alert.items()}
                assert same(alert, want), alert["candid"]
    finally:
        access.remove_user(services.kafka_bootstrap, user)


def test_the_science_archive_holds_what_raw2science_added_and_one_written_whole_stays_readable(spark, sample_science,
                                                                                                tmp_path):
    import shutil

    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from fink.stages import raw2science as r2s
    from fink.stages import science_table

    science = sample_science / "science"
    stored = pq.read_table(str(science)).column_names
    assert "candidate" not in stored and "cutoutScience" not in stored and "prv_candidates" not in stored
    assert {"candid", "snia_prob", "fink_modules", "processingStart", "processingEnd", "night"} <= set(stored)
    joined = r2s.read_science(spark, str(science))
    rows = {r["candid"]: r.asDict(recursive=True) for r in joined.collect()}
    raw = {r["candid"]: r.asDict(recursive=True) for r in spark.read.parquet(str(sample_science / "raw"))
           .withColumn("night", F.col("night").cast("string")).collect()}  # a partition value read as a number
    assert len(rows) == 207 and joined.columns[-1] == "night" and "cutoutScience" in joined.columns
    for candid, row in rows.items():  # the raw alert, whole, beside what was added
        assert [k for k, v in raw[candid].items() if not same(row[k], v)] == [], candid

    # an archive written whole (before this layout) is read as it is ...
    legacy = tmp_path / "legacy"
    joined.write.partitionBy("night").parquet(str(legacy))
    assert {r["candid"] for r in r2s.read_science(spark, str(legacy)).collect()} == set(rows)
    # ... and one holding both (whole files, then this layout's) reads every alert once, whole
    half = sorted(rows)[: len(rows) // 2]
    mixed = tmp_path / "mixed"
    joined.where(F.col("candid").isin(half)).write.partitionBy("night").parquet(str(mixed / "a"))
    spark.read.parquet(str(science)).where(~F.col("candid").isin(half)).write.partitionBy("night") \
        .parquet(str(mixed / "b"))
    for part in ("a", "b"):
        for f in (mixed / part).glob("night=*/*.parquet"):
            dest = mixed / f.parent.name / f"{part}-{f.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dest)
        shutil.rmtree(mixed / part)
    shutil.copy(science / science_table.LAYOUT, mixed / science_table.LAYOUT)
    both = {r["candid"]: r.asDict(recursive=True) for r in r2s.read_science(spark, str(mixed)).collect()}
    assert both.keys() == rows.keys()
    assert all(same(both[c], rows[c]) for c in rows)

    # distribution reads an archive written whole too (its alerts joined to the raw archive)
    totals, _ = distribute(spark, sample_science, {f"legacy_{uuid.uuid4().hex[:6]}": "fink.filters.builtin:bright"},
                           science_path=str(legacy), filter_params={})
    expected = sum(1 for r in rows.values() if r["candidate"]["magpsf"] < 18.0)
    assert totals["balanced"] and totals["alerts"] == 207 and totals["selected"] == expected > 0


def test_a_column_raw2science_adds_after_the_start_fails_the_query_naming_it(spark, sample_science, tmp_path):
    """Before the fix, the science schema came from the oldest file: a module added later had
    its column dropped from every topic without an error."""
    import shutil

    from fink.stages import science_table

    science = tmp_path / "science"
    shutil.copytree(sample_science / "science", science)
    cfg = dist.DistributionConfig(filters={f"drift_{uuid.uuid4().hex[:6]}": "fink.filters.builtin:bright"},
                                  science_path=str(science), checkpoint=str(tmp_path / "ck"))
    writer = dist.build(spark, cfg, FinkConfig(kafka_bootstrap=ServicesConfig.load().kafka_bootstrap,
                                               data_dir=str(sample_science)))
    layout = science_table.read_layout(spark, str(science))  # raw2science restarted with one more module
    science_table.write_layout(spark, str(science), layout["raw"], "ztf", layout["schema"].add("new_score", "double"))
    query = streaming.start(writer.trigger(availableNow=True), dist.QUERY_NAME)
    with pytest.raises(streaming.QueryFailed, match="new_score"):
        streaming.run_until([query], duration=180, poll=0.5)


def test_users_are_refused_what_they_were_not_granted(sample_science, spark):
    services = ServicesConfig.load()
    sfx = uuid.uuid4().hex[:6]
    granted, other = f"granted_{sfx}", f"other_{sfx}"
    distribute(spark, sample_science, {granted: "fink.filters.builtin:bright", other: "fink.filters.builtin:bright"})
    user = f"u{sfx}"
    password = access.add_user(services.kafka_bootstrap, user).read_text().strip()
    access.grant(services.kafka_bootstrap, user, granted)
    def sasl(pw, **conf):
        return kafka.sasl_config(services.kafka_users_bootstrap, user, pw, **conf)

    def read(topic, pw, group):
        errors = []
        c = Consumer(sasl(pw, **{"group.id": group, "auto.offset.reset": "earliest",
                                 "error_cb": lambda e: errors.append(e)}))
        c.subscribe([topic])
        n = 0
        for _ in range(20):
            msg = c.poll(0.5)
            if msg is not None and msg.error():
                errors.append(msg.error())
                break
            n += msg is not None
            if errors or (n and msg is None):
                break
        c.close()
        return n, " ".join(str(e) for e in errors)

    try:
        n, err = read(granted, password, f"{user}-a")
        assert n > 0 and not err
        assert "AUTHORIZATION" in read(other, password, f"{user}-b")[1].upper()  # no grant
        assert "AUTHORIZATION" in read(f"ztf_{sfx}", password, f"{user}-c")[1].upper()  # not a user topic
        assert "AUTHORIZATION" in read(granted, password, "someone-else")[1].upper()  # not their group
        assert "AUTHENTICATION" in read(granted, "wrong" + password, f"{user}-d")[1].upper()
        failures = []
        p = Producer(sasl(password))
        p.produce(granted, b"forged", on_delivery=lambda err, msg: failures.append(err))
        p.flush(15)
        assert failures and "AUTHORIZATION" in str(failures[0]).upper()  # cannot write
        admin = AdminClient(sasl(password))
        with pytest.raises(Exception, match="(?i)authoriz"):
            admin.create_topics([NewTopic(f"mine_{sfx}", 1, 1)])[f"mine_{sfx}"].result(15)
        access.revoke(services.kafka_bootstrap, user, granted)
        assert "AUTHORIZATION" in read(granted, password, f"{user}-e")[1].upper()
    finally:
        access.remove_user(services.kafka_bootstrap, user)
    assert user not in access.users(services.kafka_bootstrap)
    assert not access.password_file(user).exists()


def direct(rows, predicate):
    return sorted(c for c, r in rows.items() if predicate(r))


def test_stop_crash_and_restart_deliver_each_alert_once(spark, sample_science):
    sfx = uuid.uuid4().hex[:6]
    topic = f"once_{sfx}"
    filters = {topic: "fink.filters.builtin:bright"}
    checkpoint = str(sample_science / f"ck_once_{sfx}")
    _, first_sink = distribute(spark, sample_science, filters, checkpoint, stop_after=1, max_files_per_trigger=1)
    assert any(first_sink.delivered.values())
    # a later writer with the same id fences the first run's producer (its Python callback may
    # outlive the stopped query): from then on the delivery log says for sure what went out
    writer = f"{dist.QUERY_NAME}-{distribution_sink.query_id(spark, checkpoint)}"
    zombie = BatchPublisher(ServicesConfig.load().kafka_bootstrap, writer)
    last = zombie.last
    assert last is not None and last >= 0
    # the checkpoint of a crash right after Kafka committed batch `last`, before Spark did:
    # its offsets written (Spark writes them before running it), its commit and what follows not
    def log(name):
        return {int(p.name): p for p in Path(checkpoint, name).iterdir() if p.name.isdigit()}

    for name, first in (("offsets", last + 1), ("commits", last)):
        for n, path in log(name).items():
            if n >= first:
                path.unlink()
                Path(path.parent, f".{n}.crc").unlink(missing_ok=True)
    # and a crash inside a transaction: messages sent, never committed (the restart fences it)
    zombie.producer.begin_transaction()
    for _ in range(5):
        zombie.producer.produce(topic, key=b"{}", value=b"never committed")
    zombie.producer.flush(10)
    second, sink = distribute(spark, sample_science, filters, checkpoint, max_files_per_trigger=1)
    # Spark replays batch `last`, the delivery log skips it; every later batch goes out
    assert {b for b, counts in sink.delivered.items() if counts is None} == {last}
    assert second["replayed"] == 1 and second["balanced"]
    rows, _ = science_rows(spark, sample_science)
    messages = consume([topic])[topic]
    from fink.client import decode

    candids = sorted(decode(k, v)["candid"] for k, v in messages)
    assert candids == direct(rows, lambda r: r["candidate"]["magpsf"] < 18.0)  # each once, none lost


def test_outboxes_spark_recorded_but_kafka_did_not_are_delivered_at_the_restart(spark, sample_science, monkeypatch):
    """A batch's transaction runs while Spark encodes the next one, so a crash can come after
    Spark recorded batches whose transactions never ran, while it wrote the next outbox: the
    restart delivers the sealed outboxes, once each and in order, drops the torn one, and
    Spark runs that batch again."""
    sfx = uuid.uuid4().hex[:6]
    topic, checkpoint = f"late_{sfx}", sample_science / f"ck_late_{sfx}"
    filters = {topic: "fink.filters.builtin:bright"}
    deliver, lost = dist.Sink._deliver, []

    def crashed(self, batch_id, outbox, clock=None):
        if self.delivered or lost:  # from the second batch on the transactions never run
            lost.append(batch_id)
            return
        deliver(self, batch_id, outbox, clock)

    monkeypatch.setattr(dist.Sink, "_deliver", crashed)
    _, first = distribute(spark, sample_science, filters, str(checkpoint), max_files_per_trigger=1)
    monkeypatch.setattr(dist.Sink, "_deliver", deliver)
    assert list(first.delivered) == [0] and len(lost) >= 2
    for batch in lost:  # Spark recorded each of them: their outboxes stay, sealed
        assert (checkpoint / "outbox" / str(batch) / distribution_sink.SEAL).exists()
        assert (checkpoint / "commits" / str(batch)).exists()
    torn = lost[-1]  # the crash came while Spark wrote this one: not sealed, not recorded
    (checkpoint / "outbox" / str(torn) / distribution_sink.SEAL).unlink()
    (checkpoint / "commits" / str(torn)).unlink()
    (checkpoint / "commits" / f".{torn}.crc").unlink(missing_ok=True)

    second, sink = distribute(spark, sample_science, filters, str(checkpoint), max_files_per_trigger=1)
    assert sorted(sink.delivered) == lost and all(sink.delivered[b] is not None for b in lost)
    assert second["batches"] == 1 and second["balanced"]  # Spark ran the torn batch again, nothing else
    assert not any((checkpoint / "outbox").iterdir())
    rows, _ = science_rows(spark, sample_science)
    from fink.client import decode

    candids = sorted(decode(k, v)["candid"] for k, v in consume([topic])[topic])
    assert candids == direct(rows, lambda r: r["candidate"]["magpsf"] < 18.0)  # each once, none lost


def test_the_outbox_and_the_driver_path_deliver_the_same_alerts_and_leave_nothing(spark, sample_science,
                                                                                    monkeypatch):
    """A local checkpoint: messages go through ``<checkpoint>/outbox``, deleted after each
    commit; a remote one (the outbox path unavailable): through the driver, partition by
    partition. Both topics hold exactly what the filter selects."""
    sfx = uuid.uuid4().hex[:6]
    rows, _ = science_rows(spark, sample_science)
    want = direct(rows, lambda r: r["candidate"]["magpsf"] < 18.0)
    checkpoint = sample_science / f"ck_outbox_{sfx}"
    totals, _ = distribute(spark, sample_science, {f"outbox_{sfx}": "fink.filters.builtin:bright"}, str(checkpoint),
                           max_files_per_trigger=1)
    assert totals["balanced"] and totals["batches"] >= 3
    assert not any((checkpoint / "outbox").iterdir())  # each batch's outbox went with its commit
    monkeypatch.setattr(distribution_sink, "_outbox", lambda checkpoint, batch_id: None)
    totals, _ = distribute(spark, sample_science, {f"driver_{sfx}": "fink.filters.builtin:bright"},
                           max_files_per_trigger=1)
    assert totals["balanced"]
    from fink.client import decode

    got = consume([f"outbox_{sfx}", f"driver_{sfx}"])
    for topic in (f"outbox_{sfx}", f"driver_{sfx}"):
        assert sorted(decode(k, v)["candid"] for k, v in got[topic]) == want, topic


@pytest.fixture
def faulty_filter(monkeypatch):
    from pyspark import cloudpickle

    mod = types.ModuleType("faulty_filters")

    @alert_filter(inputs=["candidate.magpsf"])
    def fragile(mag):
        raise ZeroDivisionError("no flux")

    mod.fragile = fragile
    fragile.__module__ = "faulty_filters"
    monkeypatch.setitem(sys.modules, "faulty_filters", mod)
    cloudpickle.register_pickle_by_value(mod)  # the Python workers cannot import it
    yield mod
    cloudpickle.unregister_pickle_by_value(mod)


def test_fifty_filters_in_one_pass_send_what_a_direct_evaluation_selects(spark, sample_science, faulty_filter):
    sfx = uuid.uuid4().hex[:6]
    limits = [16.0 + 0.08 * k for k in range(50)]
    many = {f"m{k:02d}_{sfx}": "fink.filters.builtin:bright" for k in range(50)}
    params = {t: {"limit": limit} for t, limit in zip(many, limits, strict=True)}
    one_topic = f"one_{sfx}"
    totals50, _ = distribute(spark, sample_science, {**many, f"bad_{sfx}": "faulty_filters:fragile"},
                             filter_params=params)
    totals1, _ = distribute(spark, sample_science, {one_topic: "fink.filters.builtin:bright"},
                            filter_params={one_topic: {"limit": limits[25]}})
    assert totals50["balanced"] and totals1["balanced"]
    # the failing filter is reported and selects nothing; the 50 others went on
    assert totals50["filters"][f"bad_{sfx}"]["errors"] == 207
    assert "ZeroDivisionError: no flux" in totals50["filters"][f"bad_{sfx}"]["error"]
    rows, _ = science_rows(spark, sample_science)
    from fink.client import decode

    got = consume([*many, one_topic, f"bad_{sfx}"])
    assert got[f"bad_{sfx}"] == []
    for topic, limit in zip(many, limits, strict=True):
        assert sorted(decode(k, v)["candid"] for k, v in got[topic]) == \
            direct(rows, lambda r, lim=limit: r["candidate"]["magpsf"] < lim), topic
    assert sorted(got[one_topic]) == sorted(got[list(many)[25]])  # same bytes, key and value
    assert totals50["topics"][f"m25_{sfx}"]["delivered"] == totals1["topics"][one_topic]["delivered"] > 0


def test_topics_exist_with_their_settings_before_any_alert(spark, tmp_path):
    sfx = uuid.uuid4().hex[:6]
    topic = f"empty_{sfx}"
    services = ServicesConfig.load()
    cfg = dist.DistributionConfig(filters={topic: "fink.filters.builtin:bright"}, partitions=3,
                                  retention_ms=3600000)
    # an empty science archive: nothing written
    dist.build(spark, cfg, FinkConfig(kafka_bootstrap=services.kafka_bootstrap, data_dir=str(tmp_path)))
    admin = AdminClient(kafka.client_config(services.kafka_bootstrap))
    meta = admin.list_topics(timeout=10).topics
    assert len(meta[topic].partitions) == 3 and all(p.leader >= 0 for p in meta[topic].partitions.values())
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource("topic", topic)
    conf = admin.describe_configs([res])[res].result(10)
    assert conf["retention.ms"].value == "3600000"
    schema = consume([f"{topic}_schema"])[f"{topic}_schema"]
    assert len(schema) == 1 and b'"candidate"' in schema[0][0]


def test_fink_users_commands_never_print_the_password(capsys, sample_science, spark):
    from fink.ops.cli import main

    sfx = uuid.uuid4().hex[:6]
    user, topic = f"cli{sfx}", f"cli_{sfx}"
    distribute(spark, sample_science, {topic: "fink.filters.builtin:bright"})
    try:
        assert main(["users", "add", user]) == 0
        password = access.password_file(user).read_text().strip()
        assert main(["users", "grant", user, topic]) == 0
        assert main(["users", "list", "--json"]) == 0
        out = capsys.readouterr().out
        assert password not in out and f"{user}: may read {topic}" in out
        listed = json.loads(out[out.index("{"):])
        assert listed[user] == [topic]
        assert main(["users", "grant", f"nobody{sfx}", topic]) == 1
        assert "no such user" in capsys.readouterr().err
    finally:
        assert main(["users", "remove", user]) == 0


@pytest.mark.timeout(600)
def test_a_users_password_is_in_no_executed_notebook_log_or_process_list(sample_science, spark, tmp_path):
    import subprocess
    import threading

    import psutil

    from fink.config import fink_home
    from fink.ops.runner import export_html

    services = ServicesConfig.load()
    sfx = uuid.uuid4().hex[:6]
    user, topic = f"nb{sfx}", f"nb_{sfx}"
    distribute(spark, sample_science, {topic: "fink.filters.builtin:bright"})
    secret_file = access.add_user(services.kafka_bootstrap, user)
    password = secret_file.read_text().strip()
    access.grant(services.kafka_bootstrap, user, topic)
    def log_files():
        return [p for d in (fink_home() / "logs", fink_home() / "runs") for p in d.rglob("*") if p.is_file()]

    offsets = {p: p.stat().st_size for p in log_files()}
    seen_cmdlines: set[str] = set()
    done = threading.Event()

    def watch_processes():  # what `ps` shows while the notebook connects and reads
        while not done.is_set():
            for proc in psutil.process_iter(["cmdline"]):
                seen_cmdlines.add(" ".join(proc.info["cmdline"] or []))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_processes, daemon=True)
    watcher.start()
    out = tmp_path / "client.ipynb"
    try:
        proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT_NOTEBOOKS / "client.ipynb"), str(out),
                               "-p", "user", user, "-p", "password_file", str(secret_file), "-p", "max_alerts", "5",
                               "-p", "idle", "5", "-p", "save_to", str(tmp_path / "saved"), "-y", f"topics: [{topic}]",
                               "--cwd", str(ROOT_NOTEBOOKS), "--execution-timeout", "120"],
                              capture_output=True, text=True, timeout=280)
    finally:
        done.set()
        watcher.join()
        access.remove_user(services.kafka_bootstrap, user)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executed = out.read_text()
    assert f"5 alerts from ['{topic}']" in executed  # the password was used: the user read the topic
    html = export_html(out, tmp_path / "client.html").read_text()
    assert password not in executed and password not in html
    assert password not in proc.stdout and password not in proc.stderr
    assert not [c for c in seen_cmdlines if password in c] and any("papermill" in c for c in seen_cmdlines)
    for path in log_files():  # what was written during the run: from where each file ended before
        with open(path, "rb") as f:
            f.seek(offsets.get(path, 0))
            assert password.encode() not in f.read(), path


def batches_read(checkpoint, survey="ztf"):
    """Batch id -> the alert keys of the science files the file source read in it (its log)."""
    import pyarrow.parquet as pq

    from fink.stages.science_table import key_of
    from fink.survey import description

    key = key_of(description.load(survey))[0]
    out = {}
    for entry in sorted((Path(checkpoint) / "sources" / "0").glob("[0-9]*"), key=lambda p: int(p.name)):
        files = [json.loads(line)["path"].removeprefix("file://") for line in entry.read_text().splitlines()[1:]]
        out[int(entry.name)] = [k for f in files for k in pq.read_table(f, columns=[key]).column(0).to_pylist()]
    return out


def test_a_watchlist_updated_mid_stream_is_used_from_the_next_batch(spark, sample_science, tmp_path, monkeypatch):
    """Lists change between micro-batches of one running query (a new list, entries added and
    removed): each batch's messages are what astropy finds for its alerts and the lists it
    started with; the owner reads their topic with fink-client."""
    import fastavro
    import numpy as np
    import pandas as pd
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from fink_client.consumer import AlertConsumer

    from fink.filters import watchlists as wl
    from fink.ops import watch
    from fink.stages import distribution_sink, watching

    rows, ts = science_rows(spark, sample_science)
    firsts = {}
    for r in sorted(rows.values(), key=lambda r: r["candid"]):
        firsts.setdefault(r["objectId"], r)
    objects = sorted(firsts)
    sfx, registry = uuid.uuid4().hex[:6], tmp_path / "watchlists"
    owner, other = f"w{sfx}", f"x{sfx}"
    services = ServicesConfig.load()
    password = access.add_user(services.kafka_bootstrap, owner).read_text().strip()
    position = (lambda o: {"name": o, "ra": firsts[o]["candidate"]["ra"], "dec": firsts[o]["candidate"]["dec"]})  # noqa: E731
    done = watch.register("all", [position(o) for o in objects[::2]], owner, radius_arcsec=2.0, root=str(registry))
    assert done["granted"] and done["topic"] in access.grants(services.kafka_bootstrap)[owner]
    late = [{"name": f"id_{o}", "object_id": o} for o in objects[1:40:4]] + [position(o) for o in objects[3:40:4]]
    removed = objects[::4]

    states, order = [], []
    refresh, call = watching.Watcher.refresh, distribution_sink.Sink.__call__

    def refreshed(self):
        if len(states) == 1:  # between the first and the second batch: a new list, more entries
            wl.add("late", late, other, radius_arcsec=3.0, root=registry)
            wl.add("all", [{"name": "extra", **{k: v for k, v in position(objects[1]).items() if k != "name"}}],
                   owner, root=registry)
        elif len(states) == 2:  # before the third: entries removed
            wl.remove("all", owner, removed, root=registry)
        states.append({w.topic: w.entries.copy() for w in wl.load(registry)})
        return refresh(self)

    monkeypatch.setattr(watching.Watcher, "refresh", refreshed)
    monkeypatch.setattr(distribution_sink.Sink, "__call__", lambda self, b, i: (order.append(i), call(self, b, i))[1])
    checkpoint = str(tmp_path / "ck")
    nothing = f"nothing_{sfx}"
    totals, _ = distribute(spark, sample_science, {nothing: "fink.filters.builtin:bright"}, checkpoint=checkpoint,
                           filter_params={nothing: {"limit": -99.0}}, watchlists=str(registry), max_files_per_trigger=1)
    membership = batches_read(checkpoint)
    assert len(states) == len(order) == len(membership) >= 3 and sorted(order) == sorted(membership)

    want = {}
    for batch, state in zip(order, states, strict=True):
        for topic, table in state.items():
            placed = table[table["ra"].notna()]
            entries = SkyCoord(placed["ra"].to_numpy() * u.deg, placed["dec"].to_numpy() * u.deg)
            for candid in membership[batch]:
                alert = rows[candid]
                ids = table[table["object_id"] == alert["objectId"]]
                if len(ids):
                    want[(topic, candid)] = (ids["name"].iloc[0], None)
                    continue
                sep = SkyCoord(alert["candidate"]["ra"] * u.deg, alert["candidate"]["dec"] * u.deg
                               ).separation(entries).arcsec
                inside = sep <= placed["radius_arcsec"].to_numpy()
                if inside.any():
                    best = int(np.argmin(np.where(inside, sep, np.inf)))
                    want[(topic, candid)] = (placed["name"].iloc[best], float(sep[best]))
    topics = sorted({t for s in states for t in s})
    assert topics == [wl.topic_of(owner, "all"), wl.topic_of(other, "late")]
    # the changes mattered: the late list matched after its registration, removed entries would have matched
    assert any(t == topics[1] for t, _ in want)
    early = {candid for batch in order[:2] for candid in membership[batch]}
    assert any(rows[c]["objectId"] in removed for c in set(rows) - early)
    assert not any(e in removed for (t, c), (e, _) in want.items() if t == topics[0] and c not in early)

    got = {}
    for topic, messages in consume(topics).items():
        for key, value in messages:
            alert = fastavro.schemaless_reader(__import__("io").BytesIO(value), fastavro.parse_schema(json.loads(key)))
            assert (topic, alert["candid"]) not in got  # once
            got[(topic, alert["candid"])] = (alert.pop("watchlist_entry"), alert.pop("watchlist_sep_arcsec"))
            want_row = dict(rows[alert["candid"]], cdsxmatch=rows[alert["candid"]]["xm_type"] or "Unknown",
                            rf_snia_vs_nonia=rows[alert["candid"]]["snia_prob"] or 0.0)
            alert = {k: micros(v) if k in ts and v is not None else v for k, v in alert.items()}
            assert same(alert, want_row), alert["candid"]
    assert got.keys() == want.keys()
    for k, (entry, sep) in want.items():
        assert got[k][0] == entry and (sep is None) == (got[k][1] is None)
        assert sep is None or got[k][1] == pytest.approx(sep, abs=1e-6)
    assert totals["balanced"] and totals["selected"] == 0
    for topic in topics:
        n = sum(1 for t, _ in want if t == topic)
        assert totals["topics"][label(topic)]["selected"] == totals["topics"][label(topic)]["delivered"] == n

    # the owner reads their list's topic with the community client, on the SASL listener
    client = AlertConsumer([topics[0]], {"bootstrap.servers": services.kafka_users_bootstrap, "username": owner,
                                         "password": password, "group.id": f"{owner}-check"}, survey="ztf")
    read, deadline = [], time.monotonic() + 120
    while len(read) < sum(1 for t, _ in want if t == topics[0]) and time.monotonic() < deadline:
        if (msg := client.poll(5))[0] is not None:
            read.append(msg[1])
    client.close()
    access.remove_user(services.kafka_bootstrap, owner)
    assert sorted((a["candid"], a["watchlist_entry"]) for a in read) == sorted(
        (c, e) for (t, c), (e, _) in want.items() if t == topics[0])
    assert pd.Series([a["watchlist_sep_arcsec"] for a in read]).dropna().le(2.0).all()


def test_a_replay_interrupted_then_killed_and_taken_up_sends_every_selected_alert_once(spark, sample_science):
    """``fink replay`` stopped by Ctrl-C, run again and killed (-9) mid-batch, run a third time:
    the topic holds every alert the condition selects, once, and its user reads it with
    fink-client; the account says what each night selected and sent."""
    import dataclasses
    import os
    import signal
    import subprocess

    from fink_client.consumer import AlertConsumer

    from fink.config import ConfigError
    from fink.stages import raw2science as r2s
    from fink.stages import replay

    rows, _ = science_rows(spark, sample_science)
    where = "candidate.magpsf < 19.5 AND candidate.fid = 1"
    want = sorted(c for c, r in rows.items() if r["candidate"]["magpsf"] < 19.5 and r["candidate"]["fid"] == 1)
    nights = sorted(r["night"] for r in r2s.read_science(spark, str(sample_science / "science"))
                    .select("night").distinct().collect())
    assert 0 < len(want) < len(rows) and nights
    sfx = uuid.uuid4().hex[:6]
    topic, user = f"replay_{sfx}", f"r{sfx}"
    services = ServicesConfig.load()
    password = access.add_user(services.kafka_bootstrap, user).read_text().strip()
    cfg = replay.ReplayConfig(nights=f"{nights[0]}:{nights[-1]}", topic=topic, where=where)
    fink = FinkConfig(kafka_bootstrap=services.kafka_bootstrap, data_dir=str(sample_science))
    with pytest.raises(ConfigError, match="nosuch"):
        replay.build(spark, dataclasses.replace(cfg, where="nosuch.field > 1"), fink)
    args = [sys.executable, "-m", "fink.ops.cli", "replay", "--nights", cfg.nights, "--topic", topic, "--user", user,
            "--where", where, "--data-dir", str(sample_science), "--max-files", "1", "--json"]
    counts = Path(cfg.distribution(fink).checkpoint) / "nights"

    def started(n):
        """Run the command until ``n`` batches have begun (their counts written), then return it."""
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 240
        while len(list(counts.glob("*.json"))) < n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        return proc

    first = started(2)  # batch 1 has begun
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130 and b"run the same command again" in err, err.decode()[-3000:]
    stopped = json.loads(out[out.index(b"{"):])
    assert stopped["stopped_because"] == "interrupted" and not stopped["complete"]
    assert sum(stopped["sent"].values()) < len(want)
    second = started(len(list(counts.glob("*.json"))) + 1)  # one more batch has begun
    os.killpg(second.pid, signal.SIGKILL)
    _, err = second.communicate(timeout=30)
    assert second.returncode == -signal.SIGKILL, err.decode()[-3000:]
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    account = json.loads(done.stdout[done.stdout.index("{"):])
    assert account["complete"] and sum(stopped["sent"].values()) <= account["resumed_from"] < len(want)
    assert account["selected"] == account["sent"] and sum(account["sent"].values()) == len(want)
    try:
        client = AlertConsumer([topic], {"bootstrap.servers": services.kafka_users_bootstrap, "username": user,
                                         "password": password, "group.id": f"{user}-replay"}, survey="ztf")
        got, deadline = [], time.monotonic() + 120
        while len(got) < len(want) and time.monotonic() < deadline:
            if (msg := client.poll(5))[0] is not None:
                got.append(msg[1]["candid"])
        while (msg := client.poll(2))[0] is not None:  # and nothing more
            got.append(msg[1]["candid"])
        client.close()
    finally:
        access.remove_user(services.kafka_bootstrap, user)
    assert sorted(got) == want  # every selected alert, once
