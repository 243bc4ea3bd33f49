"""The Confluent wire format (Rubin) and the schemas its ids name.

A message is one zero byte, a 4-byte big-endian schema id, then the alert as schemaless
Avro. The id alone says nothing about the fields: :class:`SchemaResolver` turns it into
the writer schema, from a local folder of ``.avsc`` files, from the schemas that ship in
``lsst-alert-packet``, or from a Confluent-compatible schema registry, and keeps each one
it found by id. An id nobody knows is an :class:`~fink.survey.avro.AlertDecodeError` with the
reason ``unknown_schema``: the message goes to quarantine and the stage goes on.

Notes
-----
Rubin numbers its schemas ``MAJOR * 100 + MINOR`` (``lsst.alert.packet``'s
``Schema.get_schema_id``), so a local file ``lsst.v10_0.alert.avsc`` answers id 1000
without a registry. Minor versions only add fields; majors may rename and drop them.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from fink.errors import FinkError
from fink.survey.avro import MAX_ALERT_BYTES, AlertDecodeError, Decoded
from fink.survey.description import Survey

MAGIC = b"\x00"
HEADER_BYTES = 5

#: ``lsst.v10_0.alert.avsc``, ``lsst.v7_4.alert.selfcontained.avsc``: the id is in the name
_RUBIN_FILE = re.compile(r"(?:.*\.)?v(\d+)_(\d+)\.alert(?:\.selfcontained)?\.avsc")


class RegistryError(FinkError, RuntimeError):
    """The schema registry could not be reached or gave an answer that is not a schema."""


def frame(schema_id: int, body: bytes) -> bytes:
    """A wire message: the zero byte, the id (big-endian, 4 bytes), the schemaless body."""
    if not 0 <= schema_id < 2**31:
        raise ValueError(f"schema id {schema_id} is outside 0..2**31-1")
    return MAGIC + schema_id.to_bytes(4, "big") + body


def unframe(data: bytes | None) -> tuple[int, bytes]:
    """Split a wire message into its schema id and body.

    Raises
    ------
    AlertDecodeError
        ``empty``, ``not_avro`` (no zero byte first) or ``truncated`` (no room for an id).
    """
    if not data:
        raise AlertDecodeError("empty")
    if data[:1] != MAGIC:
        raise AlertDecodeError("not_avro", f"starts with {bytes(data[:4])!r}, not the wire format's zero byte")
    if len(data) <= HEADER_BYTES:
        raise AlertDecodeError("truncated", f"{len(data)} bytes: no schema id and body")
    return int.from_bytes(data[1:HEADER_BYTES], "big"), bytes(data[HEADER_BYTES:])


def schema_id_of(major: int, minor: int) -> int:
    """Rubin's id for schema ``major.minor``."""
    return major * 100 + minor


def encode(record: dict[str, Any], schema_id: int, schema: dict[str, Any]) -> bytes:
    """One alert in the wire format, written with ``schema`` (parsed or not)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return frame(schema_id, buf.getvalue())


def lsst_alert_packet_root() -> Path | None:
    """The ``schema`` folder of the installed ``lsst-alert-packet``, found without importing it."""
    try:
        spec = importlib.util.find_spec("lsst.alert.packet")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "schema"
    return root if root.is_dir() else None


def _local_files(folder: Path) -> dict[int, Path]:
    """id -> file, for the Rubin-named alert schemas of a folder (recursively)."""
    found: dict[int, Path] = {}
    for path in sorted(folder.rglob("*.avsc")):
        m = _RUBIN_FILE.fullmatch(path.name)
        if m:
            # a self-contained file is preferred: it needs no sibling files
            sid = schema_id_of(int(m.group(1)), int(m.group(2)))
            if sid not in found or "selfcontained" in path.name:
                found[sid] = path
        elif path.stem.isdigit():  # <id>.avsc, as a registry export would be saved
            found[int(path.stem)] = path
    return found


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    """A schema file parsed once per process (every stage's resolver reads the same files)."""
    return fastavro.schema.load_schema(str(path))


@functools.cache
def _packaged() -> dict[int, Path]:
    root = lsst_alert_packet_root()
    return _local_files(root) if root else {}


class SchemaResolver:
    """Schema id -> writer schema, looked up once per id and kept.

    Parameters
    ----------
    survey
        Its ``schemas.min_id`` bounds the ids accepted (Rubin: majors from 7).
    registry_url
        A Confluent-compatible registry (``GET <url>/schemas/ids/<id>``); asked only for
        ids no local file has.
    schema_dir
        A folder of ``.avsc`` files named ``lsst.v<major>_<minor>.alert[.selfcontained].avsc``
        or ``<id>.avsc``, looked at before the packaged schemas.
    packaged
        Use the schemas of the installed ``lsst-alert-packet``.
    timeout
        Seconds for one registry request.
    """

    def __init__(self, survey: Survey, registry_url: str = "", schema_dir: str = "", packaged: bool = True,
                 timeout: float = 10.0):
        self.survey = survey
        self.min_id = int(survey.schemas.get("min_id", 0))
        self.registry_url = registry_url.rstrip("/")
        self.timeout = timeout
        self.files: dict[int, Path] = dict(_packaged()) if packaged else {}
        if schema_dir:
            folder = Path(schema_dir).expanduser()
            if not folder.is_dir():
                raise FinkError(f"schema_dir {folder}: no such folder")
            self.files.update(_local_files(folder))
        self._cache: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.registry_requests = 0

    def known_ids(self) -> list[int]:
        """The ids answered without a registry, at or above the survey's minimum."""
        return sorted(i for i in self.files if i >= self.min_id)

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The parsed writer schema of ``schema_id``.

        Raises
        ------
        AlertDecodeError
            ``unknown_schema`` for an id below the survey's minimum, or one that neither
            a file nor the registry knows (a registry that cannot be reached says so in
            the detail; that id is asked again next time).
        """
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        if schema_id < self.min_id:
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id} is older than the oldest supported "
                                                     f"({self.min_id})")
        with self._lock:
            if schema_id not in self._cache:
                self._cache[schema_id] = self._find(schema_id)
        return self._cache[schema_id]

    def schema_json(self, schema_id: int) -> str:
        """The writer schema of ``schema_id`` as one self-contained JSON text (for Spark's ``from_avro``)."""
        return json.dumps(fastavro.schema.expand_schema(_plain(self.schema(schema_id))))

    def _find(self, schema_id: int) -> dict[str, Any]:
        path = self.files.get(schema_id)
        if path is not None:
            schema = _load(path)
        elif self.registry_url:
            schema = fastavro.parse_schema(self._ask_registry(schema_id))
        else:
            known = ", ".join(map(str, self.known_ids())) or "none"
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id}: no local schema (known: {known}) "
                                                     "and no registry_url")
        self._check_is_alert(schema_id, schema)
        return schema

    def _ask_registry(self, schema_id: int) -> dict[str, Any]:
        url = f"{self.registry_url}/schemas/ids/{schema_id}"
        self.registry_requests += 1
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 - a configured URL
                answer = json.loads(response.read())
            return json.loads(answer["schema"])
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise AlertDecodeError("unknown_schema", f"schema id {schema_id}: the registry has no such id "
                                                         f"({url})") from exc
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id}: registry answered HTTP {exc.code} "
                                                     f"({url})") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id}: registry unreachable ({url}: "
                                                     f"{getattr(exc, 'reason', exc)})") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id}: the registry's answer is not a "
                                                     f"schema ({url})") from exc

    def _check_is_alert(self, schema_id: int, schema: Any) -> None:
        name = schema.get("name", "") if isinstance(schema, dict) else ""
        fields = {f.get("name") for f in schema.get("fields", []) if isinstance(f, dict)} if name else set()
        if (schema.get("type") != "record" or name.rsplit(".", 1)[-1] not in self.survey.record_names
                or not self.survey.required_fields() <= fields):
            raise AlertDecodeError("unknown_schema", f"schema id {schema_id} names {name or schema!r}, "
                                                     f"not a {self.survey.name} alert")

    def decode(self, data: bytes | None, max_bytes: int = MAX_ALERT_BYTES) -> Decoded:
        """Decode one wire message into its alert (see :func:`decode`)."""
        return decode(data, self, max_bytes)


def _plain(schema: Any) -> Any:
    """A parsed schema without fastavro's bookkeeping keys (``__fastavro_parsed``, ``__named_schemas``)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def decode(data: bytes | None, resolver: SchemaResolver, max_bytes: int = MAX_ALERT_BYTES) -> Decoded:
    """Decode one wire message: its schema from ``resolver``, then the checks of its survey.

    Raises
    ------
    AlertDecodeError
        ``empty``, ``not_avro``, ``oversized``, ``truncated`` (the body ends early or has
        bytes left over), ``unknown_schema``, ``missing_identifiers`` or ``bad_time``.
    """
    from fink.survey.avro import check_alert

    schema_id, body = unframe(data)
    size = HEADER_BYTES + len(body)
    if size > max_bytes:
        raise AlertDecodeError("oversized", f"{size} bytes > {max_bytes}")
    schema = resolver.schema(schema_id)
    buf = io.BytesIO(body)
    try:
        alert = fastavro.schemaless_reader(buf, schema, None)
    except Exception as exc:  # noqa: BLE001 - fastavro raises EOFError, ValueError, UnicodeDecodeError...
        raise AlertDecodeError("truncated", f"schema id {schema_id}: {type(exc).__name__}: {exc}"[:300]) from exc
    if buf.tell() != len(body):
        raise AlertDecodeError("truncated", f"schema id {schema_id}: {len(body) - buf.tell()} bytes after the alert")
    if not isinstance(alert, dict):
        raise AlertDecodeError("unknown_schema", f"schema id {schema_id} decodes to {type(alert).__name__}")
    check_alert(alert, resolver.survey)
    major, minor = divmod(schema_id, 100)
    return Decoded(alert, f"{major}.{minor}", size)


def decoder(survey: Survey, registry_url: str = "", schema_dir: str = "") -> Callable[[bytes | None], Decoded]:
    """The function decoding one of ``survey``'s messages into a :class:`~fink.survey.avro.Decoded`
    (or raising :class:`~fink.survey.avro.AlertDecodeError`), as its description's ``wire`` says."""
    from fink.survey.avro import decode_container

    if survey.wire == "confluent":
        return SchemaResolver(survey, registry_url=registry_url, schema_dir=schema_dir).decode
    return functools.partial(decode_container, survey=survey)
