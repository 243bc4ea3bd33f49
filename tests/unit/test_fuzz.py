"""Fuzzing the code that meets untrusted input: no stage stops on a message, every bad one gets a reason.

Property-based tests (hypothesis), without Spark's JVM, of the alert decoder and the
simulator's fault kinds, the Python classifier of checkstream over batches mixing good
and bad messages, the duplicate check of stream2raw, the alert schemas (shipped ones and
those derived from Spark types), the replay sources, and the science-module and filter
loaders. The good alerts come from the package's deterministic generator
(:mod:`fink.sim`), cutouts included, so they have the size of real ZTF alerts.

Hypothesis is derandomized (the same examples every run, no example database): a failure
here is reproducible as is, and each bug found is pinned with ``@example``.
"""

import importlib.util
import io
import math
import re
import sys
from collections import Counter, OrderedDict, defaultdict

import fastavro
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pyspark.sql import types as T

from fink.errors import FinkError
from fink.filters import AlertFilter, FilterError, load_filters
from fink.ops.checkstream import StreamStats
from fink.science import ScienceModule, ScienceModuleError, load_modules
from fink.science.science_api import load_module
from fink.sim import NightConfig, conform, faults, generate_night
from fink.sim.sources import SourceError, read_messages
from fink.stages.duplicates import ArchivedCandids, NightIds, find_duplicates
from fink.survey import avro
from fink.survey.avro import AVRO_MAGIC, AlertDecodeError, SchemaError, avro_schema

pytestmark = pytest.mark.timeout(120)  # a decoder that loops on some input fails here instead of hanging

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: for properties whose examples cost more (whole batches, 1 MiB faults)
FUZZ_FEW = settings(FUZZ, max_examples=60)


class Sample:
    """The good alerts of a small generated night, in every form the tests need.

    Its repr is short: hypothesis prints a test's arguments, fixtures included.
    """

    def __init__(self, folder):
        night = generate_night(NightConfig(n_objects=6, seed=3))  # 13 alerts of 30-40 KB, cutouts included
        self.records = [conform(r) for r in night.alerts]
        self.messages = {v: list(night.messages(v)) for v in ("4.02", "3.3")}
        self.good = self.messages["4.02"]
        # the compact archive: one deflate container of several blocks
        self.archive = night.write_archive(folder).read_bytes()

    def __repr__(self) -> str:
        return f"<Sample: {len(self.records)} alerts>"


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Sample:
    return Sample(tmp_path_factory.mktemp("sample"))


def _decode(data: bytes):
    """What the decoder makes of ``data``: an alert, or the project's error with a known reason.

    Any other exception (an uncaught ``AttributeError`` of fastavro's output, say)
    propagates and fails the property with the example that caused it.
    """
    try:
        decoded = avro.decode_container(data)
    except AlertDecodeError as exc:
        assert exc.reason in avro.REASONS and exc.reason != "duplicate"  # duplicates are the caller's to find
        assert str(exc).startswith(f"{exc.reason}: {avro.REASONS[exc.reason]}")
        event(f"refused: {exc.reason}")  # the mix of outcomes: pytest --hypothesis-show-statistics
        return exc
    alert = decoded.alert
    assert isinstance(alert, dict) and alert["objectId"] and alert["candid"]
    assert isinstance(alert["candidate"], dict) and alert["candidate"]["candid"] == alert["candid"]
    assert decoded.size == len(data)
    event("decoded")
    return decoded


def _header(message: bytes) -> bytes:
    """A container's header: magic, metadata (the writer schema), sync marker (the message's last 16 bytes)."""
    return message[: message.index(message[-16:]) + 16]


# -- the decoder ------------------------------------------------------------------------------

@FUZZ
@given(data=st.one_of(st.binary(max_size=4096), st.binary(max_size=4096).map(lambda b: AVRO_MAGIC + b)))
@example(data=b"")
@example(data=b"Obj")
@example(data=AVRO_MAGIC)
def test_arbitrary_bytes_are_decoded_or_refused_with_a_reason(data):
    outcome = _decode(data)
    if not data.startswith(AVRO_MAGIC):
        assert outcome.reason == ("empty" if not data else "not_avro")


@FUZZ
@given(i=st.integers(0, 12), body=st.binary(max_size=4096), version=st.sampled_from(["4.02", "3.3"]))
def test_a_real_header_over_a_random_body_is_refused(sample, i, body, version):
    """The header of a real alert (its schema, codec and sync marker), then random blocks."""
    message = sample.messages[version][i]
    outcome = _decode(_header(message) + body + message[-16:])
    assert isinstance(outcome, AlertDecodeError)  # random bytes are not a ZTF alert record
    assert outcome.reason in ("truncated", "missing_identifiers", "unknown_schema")


@FUZZ
@given(i=st.integers(0, 12), back=st.integers(1, 100_000))
@example(i=0, back=1)  # only the last byte of the trailing sync marker missing
@example(i=0, back=16)  # the whole trailing sync marker missing
@example(i=0, back=17)  # and the last byte of the record
def test_every_strict_prefix_of_an_alert_is_refused_as_truncated(sample, i, back):
    message = sample.good[i]
    part = message[: max(0, len(message) - back)]
    outcome = _decode(part)
    assert isinstance(outcome, AlertDecodeError)
    assert outcome.reason == ("empty" if not part else "not_avro" if len(part) < len(AVRO_MAGIC) else "truncated")


_CORRUPTION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=32)),
)


def _corrupt(message: bytes, corruptions) -> bytes:
    data = bytearray(message)
    for what, pos, arg in corruptions:
        pos %= len(data) or 1
        if what == "flip" and data:
            data[pos] ^= 1 << arg
        elif what == "overwrite":
            data[pos: pos + len(arg)] = arg
        elif what == "delete":
            del data[pos: pos + arg]
        else:
            data[pos:pos] = arg
    return bytes(data)


@FUZZ
@given(i=st.integers(0, 12), version=st.sampled_from(["4.02", "3.3"]),
       corruptions=st.lists(_CORRUPTION, min_size=1, max_size=6))
@example(i=0, version="4.02", corruptions=[("flip", 0, 0)])  # the magic itself
def test_corrupted_alerts_are_decoded_or_refused(sample, i, version, corruptions):
    message = sample.messages[version][i]
    data = _corrupt(message, corruptions)
    outcome = _decode(data)
    if isinstance(outcome, AlertDecodeError) and data[:4] != message[:4]:
        assert outcome.reason in ("empty", "not_avro")


@FUZZ_FEW
@given(i=st.integers(0, 12), kind=st.sampled_from(sorted(set(faults.KINDS) - {"duplicate"})),
       seed=st.integers(0, 2**32 - 1))
def test_every_fault_kind_is_refused_with_its_reason_whatever_the_seed(sample, i, kind, seed):
    bad = faults.make(kind, sample.good[i], np.random.default_rng(seed))
    outcome = _decode(bad)
    assert isinstance(outcome, AlertDecodeError) and outcome.reason == faults.KINDS[kind]


# -- a batch mixing good and bad messages: the Python classifier (checkstream) -----------------

_BAD = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300).filter(lambda b: not b.startswith(AVRO_MAGIC))),
    st.tuples(st.just("prefix"), st.integers(1, 100_000)),
    st.tuples(st.just("fault"), st.sampled_from(sorted(faults.KINDS)), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("schema"), st.sampled_from(["union", "array", "primitive", "candidate", "mismatch"])),
)


def _bad_message(item, after: bytes, record: dict) -> tuple[bytes, str]:
    """A bad message placed after the good message ``after`` (of ``record``), and its expected reason."""
    if item[0] == "bytes":
        return item[1], "empty" if not item[1] else "not_avro"
    if item[0] == "prefix":
        part = after[: max(0, len(after) - item[1])]
        return part, "empty" if not part else "not_avro" if len(part) < 4 else "truncated"
    if item[0] == "fault":
        kind, seed = item[1], item[2]
        return faults.make(kind, after, np.random.default_rng(seed)), faults.KINDS[kind]
    schema, value = _mutated(record, (item[1],))
    return _container(schema, value), "unknown_schema"


@FUZZ_FEW
@given(n_good=st.integers(1, 13), bad=st.lists(st.tuples(st.integers(0, 12), _BAD), max_size=25))
def test_a_batch_mixing_good_and_bad_messages_reconciles(sample, n_good, bad):
    """Every good alert is taken, every bad message counted under its reason: in = good + rejected."""
    slots = defaultdict(list)
    for slot, item in bad:
        slots[slot % n_good].append(item)
    plan = []  # (message, the reason it must get, or None for an alert)
    for k in range(n_good):
        plan.append((sample.good[k], None))
        plan += [_bad_message(item, sample.good[k], sample.records[k]) for item in slots[k]]
    stats = StreamStats("fuzz")
    for offset, (message, _) in enumerate(plan):
        stats.add(message, 0, offset)  # never raises: that is the property
    expected = Counter(reason for _, reason in plan if reason)
    assert stats.messages == len(plan) == n_good + sum(expected.values())
    assert stats.alerts == n_good
    assert set(stats.seen) == {r["candid"] for r in sample.records[:n_good]}
    assert dict(stats.rejected) == dict(expected)
    rejected = [(offset, reason) for offset, (_, reason) in enumerate(plan) if reason]
    assert [(offset, reason) for _, offset, reason, _ in stats.examples] == rejected[-20:]


@pytest.mark.parametrize("jd", [math.nan, 1e20, -1e20, 0.0, math.inf])
def test_an_alert_with_an_absurd_date_is_set_aside_as_bad_time_and_the_watch_goes_on(sample, jd):
    record = dict(sample.records[0])
    record["candidate"] = {**record["candidate"], "jd": jd}
    stats = StreamStats("fuzz")
    stats.add(avro.encode_container(record), 0, 0)
    stats.add(avro.encode_container(sample.records[1]), 0, 1)
    assert stats.messages == 2 and stats.alerts == 1 and dict(stats.rejected) == {"bad_time": 1}


# -- stream2raw's duplicate check (pure pandas) -------------------------------------------------

NIGHTS = ("20261127", "20261128", "20261129")


@FUZZ
@given(rows=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(NIGHTS)), max_size=40),
       archived=st.fixed_dictionaries({n: st.sets(st.integers(0, 30), max_size=10) for n in NIGHTS}))
def test_stream2raw_sets_aside_exactly_the_duplicates_and_a_replay_archives_nothing_twice(rows, archived):
    alerts = pd.DataFrame({"topic": "t", "partition": 0, "offset": range(len(rows)),
                           "candid": pd.Series([c for c, _ in rows], dtype="int64"),
                           "night": pd.Series([n for _, n in rows], dtype=object)})
    index = ArchivedCandids(None, "unused")  # every night known already: no Spark read
    index.nights = OrderedDict((n, NightIds(s)) for n, s in archived.items())
    dups = find_duplicates(alerts, index)
    seen, expected = set(), set()
    for i, (candid, night) in enumerate(rows):
        if candid in seen or candid in archived[night]:
            expected.add(i)
        seen.add(candid)
    assert set(dups.index) == expected
    kept = alerts.drop(dups.index)
    assert len(kept) + len(dups) == len(alerts)
    assert kept["candid"].is_unique
    assert not any(c in archived[n] for c, n in zip(kept["candid"], kept["night"], strict=True))
    index.add(kept)
    assert len(find_duplicates(alerts, index)) == len(alerts)


# -- alert schemas --------------------------------------------------------------------------------

#: Avro's rule for the names of records and fields (specification, "Names")
_AVRO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RECORD_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(lambda n: n != "alert")
_REQUIRED = ("objectId", "candid", "candidate")
# (not cutoutScience: it defines the named type the other two cutouts refer to)
_OPTIONAL = ("publisher", "prv_candidates", "fp_hists", "cutoutTemplate", "cutoutDifference")
_MUTATION = st.one_of(
    st.tuples(st.just("rename"), _RECORD_NAME),
    st.tuples(st.just("drop"), st.sampled_from(_REQUIRED)),
    st.tuples(st.just("drop_optional"), st.sampled_from(_OPTIONAL)),
    st.tuples(st.just("version"), st.text(max_size=20)),
    st.tuples(st.sampled_from(["union", "array", "map", "primitive", "candidate", "mismatch"])),
    st.tuples(st.just("identifier"), st.sampled_from([("objectId", ""), ("objectId", None), ("candid", 0),
                                                      ("candid", None)])),
)


def _mutated(record: dict, mutation: tuple) -> tuple:
    """The 4.02 schema and ``record`` changed by ``mutation``: (writer schema, value to write)."""
    schema = avro.load_schema("4.02")
    fields = {f["name"]: f for f in schema["fields"]}
    record = dict(record)
    what = mutation[0]
    if what == "rename":
        schema["name"] = mutation[1]
    elif what in ("drop", "drop_optional"):
        schema["fields"] = [f for f in schema["fields"] if f["name"] != mutation[1]]
        record.pop(mutation[1])
    elif what == "version":
        schema["version"] = mutation[1]
    elif what == "union":  # the alert as a branch of a union
        return ["null", schema], record
    elif what == "array":
        return {"type": "array", "items": schema}, [record]
    elif what == "map":
        return {"type": "map", "values": schema}, {"alert": record}
    elif what == "primitive":
        return "string", record["objectId"]
    elif what == "candidate":  # a candidate that is not a record
        fields["candidate"]["type"] = "string"
        record["candidate"] = "candidate"
    elif what == "mismatch":  # candid and candidate.candid disagree: the JVM decoder's unknown_schema
        record["candid"] += 1
    elif what == "identifier":
        name, value = mutation[1]
        fields[name]["type"] = ["null", fields[name]["type"]]
        record[name] = value
    return schema, record


def _container(schema, value) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), [value], codec="null")
    return buf.getvalue()


@FUZZ
@given(i=st.integers(0, 12), mutation=_MUTATION)
@example(i=0, mutation=("union",))  # found: fastavro gives a list as the writer schema -> AttributeError
@example(i=0, mutation=("primitive",))  # found: a str writer schema -> AttributeError
@example(i=0, mutation=("candidate",))  # found: decoded, then checkstream's candidate["jd"] -> TypeError
def test_mutated_alert_schemas_are_refused_naming_the_problem(sample, i, mutation):
    record = sample.records[i]
    schema, value = _mutated(record, mutation)
    outcome = _decode(_container(schema, value))
    what = mutation[0]
    if what in ("drop_optional", "version"):
        assert not isinstance(outcome, AlertDecodeError)
        assert (outcome.alert["objectId"], outcome.alert["candid"]) == (record["objectId"], record["candid"])
        assert set(outcome.alert) == set(value)
        assert outcome.schema_version == (mutation[1] if what == "version" else "4.02")
        return
    assert isinstance(outcome, AlertDecodeError)
    if what == "identifier":
        assert outcome.reason == "missing_identifiers" and f"{mutation[1][0]}={mutation[1][1]!r}" in str(outcome)
    else:
        assert outcome.reason == "unknown_schema"
    if what == "rename":
        assert repr(mutation[1]) in str(outcome)  # names the schema it got


@FUZZ
@given(version=st.one_of(st.text(max_size=12), st.sampled_from(["4.02", "3.1", "../ztf/4.02", "4.02/", "4\x00"])),
       survey=st.one_of(st.just("ztf"), st.text(max_size=8)))
@example(version="4.02", survey="rubin")  # found: FileNotFoundError while naming the shipped versions
@example(version="4\x00", survey="ztf")  # found: ValueError (embedded null byte)
@example(version="../ztf/4.02", survey="ztf")  # a path, not a version: refused
def test_a_schema_version_is_shipped_or_refused_by_name(version, survey):
    try:
        schema = avro.load_schema(version, survey)
    except FinkError as exc:
        assert repr(version) in str(exc) or repr(survey) in str(exc)
        assert (survey, version) not in [("ztf", v) for v in avro.schema_versions("ztf")]
        return
    assert survey == "ztf" and version in avro.schema_versions("ztf")
    assert schema["name"] == "ztf.alert" and schema["version"] == version


_SUPPORTED = [T.StringType(), T.BinaryType(), T.BooleanType(), T.IntegerType(), T.LongType(), T.ShortType(),
              T.ByteType(), T.FloatType(), T.DoubleType(), T.TimestampType()]
_UNSUPPORTED = [T.DecimalType(10, 2), T.DateType(), T.NullType(), T.TimestampNTZType(), T.DayTimeIntervalType(),
                T.CharType(3), T.VarcharType(5)]
_FIELD_NAME = st.one_of(st.sampled_from(["a", "b", "a_b", "b_item", "value"]),
                        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True),
                        st.text(alphabet="ab_1-. é", max_size=4))


def _structs(children):
    return st.lists(st.tuples(_FIELD_NAME, children), max_size=4).map(
        lambda fields: T.StructType([T.StructField(name, dtype) for name, dtype in fields]))


_SPARK_TYPES = st.recursive(
    st.sampled_from(_SUPPORTED * 3 + _UNSUPPORTED),
    lambda children: st.one_of(st.builds(T.ArrayType, children),
                               st.builds(T.MapType, st.sampled_from([T.StringType(), T.StringType(), T.LongType()]),
                                         children),
                               _structs(children)),
    max_leaves=10)


def _check_avro_spec(schema) -> None:
    """Names valid, no named type defined twice, field names unique per record (what Avro's Java
    parser, used by Spark's ``to_avro``, enforces and fastavro does not)."""
    defined: set[str] = set()

    def walk(node):
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            if node["type"] == "record":
                assert _AVRO_NAME.match(node["name"]), node["name"]
                assert node["name"] not in defined, f"record {node['name']} defined twice"
                defined.add(node["name"])
                names = [f["name"] for f in node["fields"]]
                assert len(set(names)) == len(names), names
                for f in node["fields"]:
                    assert _AVRO_NAME.match(f["name"]), f["name"]
                    walk(f["type"])
            elif node["type"] == "array":
                walk(node["items"])
            elif node["type"] == "map":
                walk(node["values"])

    walk(schema)


@FUZZ
@given(struct=_structs(_SPARK_TYPES))
@example(struct=T.StructType([T.StructField("a", T.StructType([T.StructField("b", T.StructType())])),
                              T.StructField("a_b", T.StructType())]))  # found: two records named alert_a_b
@example(struct=T.StructType([T.StructField("a-b", T.StringType())]))  # found: an invalid Avro name accepted
@example(struct=T.StructType([T.StructField("a", T.StringType()), T.StructField("a", T.LongType())]))
def test_the_avro_schema_of_any_spark_struct_is_valid_or_refused_naming_the_column(struct):
    try:
        schema = avro_schema(struct)
    except SchemaError as exc:
        assert re.match(r"column '[^']*': .+", str(exc)), str(exc)
        return
    _check_avro_spec(schema)
    assert [f["name"] for f in schema["fields"]] == struct.fieldNames()
    parsed = fastavro.parse_schema(schema)
    empty = {name: None for name in struct.fieldNames()}  # every field may be null
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, empty)
    assert fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed) == empty


# -- replay sources ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(lambda b: AVRO_MAGIC + b)),
       back=st.one_of(st.none(), st.integers(1, 300_000)))
@example(data=AVRO_MAGIC + b"garbage", back=None)  # found: fastavro's ValueError, not SourceError
def test_a_replay_file_is_read_or_refused_by_name(sample, scratch, data, back):
    """Arbitrary bytes, or a prefix of a real archive (``back`` bytes short of the end)."""
    if back is not None:
        data = sample.archive[: max(0, len(sample.archive) - back)]
    path = scratch / "night.avro"
    path.write_bytes(data)
    try:
        messages = list(read_messages(path))
    except SourceError as exc:
        assert str(path) in str(exc)
        return
    if back is not None:  # cut at a block boundary: the blocks before it, identical
        assert messages == sample.good[: len(messages)]
    for message in messages:
        assert isinstance(message, bytes) and message.startswith(AVRO_MAGIC)


# -- the science-module and filter loaders -------------------------------------------------------

_MODULES = ["fink.science.modules.template", "fink.filters.builtin", "fink.science.science_api", "math", "fink",
            "", ".", ".fink", "fink..science", "fink.", "nosuch.pkg", "fink.nosuch"]
_ATTRS = ["brightening", "bright", "early_snia", "module", "sqrt", "missing", "__name__", "", "a.b", " bright"]
_STRUCTURED_PATH = st.builds(lambda m, sep, a: f"{m}{sep}{a}", st.sampled_from(_MODULES),
                             st.sampled_from([":", ".", "::", ":.", ""]), st.sampled_from(_ATTRS))
_MODULE_PATHS = {"fink.science.modules.template:brightening", "fink.science.modules.template.brightening"}
_FILTER_PATHS = {"fink.filters.builtin:bright", "fink.filters.builtin.bright",
                 "fink.filters.builtin:early_snia", "fink.filters.builtin.early_snia"}
_ANY_PATH = st.one_of(st.sampled_from(sorted(_MODULE_PATHS | _FILTER_PATHS)), _STRUCTURED_PATH,
                      st.text(max_size=30), st.none(), st.integers(), st.floats(),
                      st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers()))


def _either(first, second):
    """About half the time ``first``, else ``second`` (``one_of`` would flatten ``second``'s branches
    next to ``first``, which then came up rarely: the loaders' success paths would hardly run)."""
    return st.tuples(st.booleans(), first, second).map(lambda x: x[1] if x[0] else x[2])


def _often(valid: list, strategy):
    return _either(st.sampled_from(valid), strategy)


_PARAMS = st.one_of(
    st.none(), st.just({}),
    st.dictionaries(st.sampled_from(["limit", "threshold", "x", ""]), st.floats(allow_nan=False), max_size=2),
    st.text(max_size=4), st.integers(), st.lists(st.integers(), max_size=2))


def _imports_something_new(path) -> bool:
    """Whether loading ``path`` would import a top-level module not imported yet (a fuzzed
    ``antigravity`` must not open a browser): such examples are skipped, not run."""
    if not isinstance(path, str):
        return False
    modname, sep, _ = path.partition(":")
    if not sep:
        modname = path.rpartition(".")[0]
    top = modname.split(".")[0]
    return top.isidentifier() and top not in sys.modules and importlib.util.find_spec(top) is not None


def _names_the_input(message: str, *inputs) -> bool:
    """The message shows one of ``inputs`` (as str, repr or, for a string, between quotes). A
    string shorter than two characters (``t``, the empty string) would match by chance: only
    its quoted forms count; when the inputs other than None have no countable form, any
    message will do."""
    def forms(x) -> set[str]:
        # a string is also shown between quotes as it is: repr escapes a character Python
        # does not know as printable ('\U00018d09'), where the message holds the character
        quoted = (f"'{x}'",) if isinstance(x, str) else ()
        return {f for f in (str(x), repr(x), *quoted) if len(f) >= 2 or not isinstance(x, str)}

    shown = set().union(*(forms(x) for x in inputs))
    countable = any(forms(x) for x in inputs if x is not None)
    return bool(message) and (not countable or any(f in message for f in shown))


@FUZZ
@given(path=_often(sorted(_MODULE_PATHS), _ANY_PATH), params=_PARAMS)
@example(path=".foo:bar", params=None)  # found: TypeError of a relative import
@example(path=3, params=None)  # found: AttributeError ('int' object has no attribute 'partition')
@example(path="fink.science.modules.template:brightening", params="xy")  # found: ValueError of dict("xy")
def test_any_module_path_is_loaded_or_refused_by_name(path, params):
    if _imports_something_new(path):
        return
    try:
        loaded = load_module(path, params)
    except ScienceModuleError as exc:
        event("refused")
        assert _names_the_input(str(exc), path, params)
        assert not (isinstance(path, str) and path in _MODULE_PATHS and params in (None, {}))
        return
    event("loaded")
    assert isinstance(loaded, ScienceModule) and isinstance(path, str) and path in _MODULE_PATHS
    assert loaded.name == path
    assert loaded.params == dict(params or {})


@FUZZ
@given(paths=_either(st.lists(_often(sorted(_MODULE_PATHS), _ANY_PATH), max_size=2), _ANY_PATH),
       params=_either(st.one_of(st.none(), st.just({})),
                      st.one_of(st.dictionaries(_often(sorted(_MODULE_PATHS), st.text(max_size=3)), _PARAMS,
                                                max_size=1), _PARAMS)))
@example(paths="fink.science.modules.template:brightening", params=None)  # found: loaded letter by letter
@example(paths=[["x"]], params={})  # found: TypeError (unhashable list)
@example(paths=["\U00018d09"], params={})  # found: the check missed a character repr escapes
def test_any_module_list_is_loaded_or_refused_by_name(paths, params):
    if any(_imports_something_new(p) for p in (paths if isinstance(paths, list) else [paths])):
        return
    try:
        loaded = load_modules(paths, params)
    except ScienceModuleError as exc:
        event("refused")
        assert _names_the_input(str(exc), paths, params, *(paths if isinstance(paths, list) else []),
                                *(params if isinstance(params, dict) else []))
        return
    event(f"loaded {len(loaded)}")
    assert isinstance(paths, list) and [m.name for m in loaded] == paths
    assert set(paths) <= _MODULE_PATHS and len(paths) <= 1  # two copies of one module clash on their outputs


@pytest.mark.parametrize("source, cause", [
    ("raise RuntimeError('catalogue missing')\n", "RuntimeError: catalogue missing"),
    ("def broken(:\n", "SyntaxError: invalid syntax"),
])
def test_a_module_that_fails_while_imported_is_refused_by_name(tmp_path, monkeypatch, source, cause):
    """Not a string a fuzzer finds: the user's own module raising at import time."""
    (tmp_path / "fuzz_broken_module.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    message = re.escape(f"'fuzz_broken_module:f': importing 'fuzz_broken_module' failed ({cause}")
    with pytest.raises(ScienceModuleError, match=message):
        load_module("fuzz_broken_module:f")
    with pytest.raises(FilterError, match=message):
        load_filters({"t": "fuzz_broken_module:f"})
    assert "fuzz_broken_module" not in sys.modules


_TOPICS = ["t", "fink_bright"]
_TOPIC = _either(st.one_of(st.sampled_from(_TOPICS), st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True)),
                 st.one_of(st.text(max_size=8), st.integers(), st.just("x_schema")))


@FUZZ
@given(filters=_either(st.dictionaries(_TOPIC, _often(sorted(_FILTER_PATHS), _ANY_PATH), max_size=2),
                       st.one_of(st.lists(st.text(max_size=4), max_size=2), st.text(max_size=4), st.none())),
       params=_either(st.one_of(st.none(), st.dictionaries(st.sampled_from(_TOPICS), _PARAMS, max_size=1)),
                      st.one_of(st.dictionaries(_TOPIC, _PARAMS, max_size=2), st.text(max_size=4))))
@example(filters={"t": 3}, params=None)  # found: AttributeError ('int' object has no attribute 'partition')
@example(filters={"t": "fink.filters.builtin:bright"}, params={"t": "abc"})  # found: ValueError of dict("abc")
@example(filters=["t"], params=None)  # found: AttributeError ('list' object has no attribute 'items')
def test_any_filter_mapping_is_loaded_or_refused_by_name(filters, params):
    if isinstance(filters, dict) and any(_imports_something_new(p) for p in filters.values()):
        return
    try:
        loaded = load_filters(filters, params)
    except FilterError as exc:
        event("refused")
        named = [filters, params]
        named += [*filters, *filters.values()] if isinstance(filters, dict) else []
        named += list(params) if isinstance(params, dict) else []
        assert _names_the_input(str(exc), *named)
        return
    event(f"loaded {len(loaded)}")
    assert isinstance(filters, dict) and all(isinstance(f, AlertFilter) for f in loaded)
    assert [(f.topic, f.module.name) for f in loaded] == list(filters.items())
    assert set(filters.values()) <= _FILTER_PATHS
