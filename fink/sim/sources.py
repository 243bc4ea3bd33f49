"""Where replayed alerts come from: the generator, a folder of ``.avro`` files, or a ZTF tarball.

Every source yields wire messages as the survey sends them. A ZTF file that already holds
one alert (an Avro container file) is replayed byte for byte; a file holding many records
(the committed sample night) gives one message per record, encoded with that file's
schema. A Rubin file (a zero byte, a schema id, the schemaless body: the Confluent wire
format) is one message, replayed byte for byte.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import fastavro

from fink.errors import FinkError
from fink.survey.avro import AVRO_MAGIC, sync_marker
from fink.survey.wire import HEADER_BYTES as WIRE_HEADER_BYTES
from fink.survey.wire import MAGIC as WIRE_MAGIC


class SourceError(FinkError, ValueError):
    """A replay source that does not exist or holds no alert."""


def _split(data: bytes, name: str) -> Iterator[bytes]:
    """One message per record of a container file (the file itself if it holds one record, or
    if it is one wire-format message)."""
    if data[:1] == WIRE_MAGIC and len(data) > WIRE_HEADER_BYTES:
        yield data
        return
    if not data.startswith(AVRO_MAGIC):
        raise SourceError(f"{name}: neither an Avro container file nor a wire-format message (zero byte, schema id)")
    try:
        reader = fastavro.reader(io.BytesIO(data))
        records = list(reader)
    except Exception as exc:  # noqa: BLE001 - fastavro raises ValueError, EOFError, zlib.error...
        raise SourceError(f"{name}: not a readable Avro container file ({type(exc).__name__}: {exc})") from exc
    if len(records) == 1 and reader.codec == "null":
        yield data
        return
    schema = fastavro.parse_schema(reader.writer_schema)
    for record in records:
        buf = io.BytesIO()
        fastavro.writer(buf, schema, [record], codec="null", sync_marker=sync_marker(record.get("candid", 0)))
        yield buf.getvalue()


def read_messages(source: str | Path) -> Iterator[bytes]:
    """Yield the alerts of ``source``: a ``.avro`` file, a folder of them, or a ``.tar.gz``."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder (a folder of .avro files, an .avro file or a .tar.gz)")
    if path.is_dir():
        files = sorted(path.rglob("*.avro"))
        if not files:
            raise SourceError(f"{path}: no .avro file in this folder")
        for f in files:
            yield from _split(f.read_bytes(), str(f))
    elif path.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".avro"):
                    yield from _split(tar.extractfile(member).read(), f"{path}:{member.name}")
    else:
        yield from _split(path.read_bytes(), str(path))
