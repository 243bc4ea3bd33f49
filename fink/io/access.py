"""Users of the distribution topics: SCRAM credentials and read grants on the local broker.

A user connects to the broker's SASL listener (``kafka_sasl_port``) with SCRAM-SHA-512, as
the Fink community client does, and may read the topics granted to them (and their
``_schema`` topics) with consumer groups whose id starts with ``<name>-``, nothing else: no
other topic, no write, no topic creation. Only distribution topics can be granted (a topic
with its ``_schema`` topic): never ``*``, Kafka's internal topics, the delivery log or a
survey's topic. These calls go through the internal listener as the service account
(:func:`fink.io.kafka.client_config`), whose password only the machine's operator reads.

Notes
-----
A password is never an argument of a command line, a notebook parameter or a log line:
:func:`add_user` generates one (or takes it from the caller in memory) and writes it to
``$FINK_HOME/secrets/users/<name>`` with mode 0600, for the operator to hand over.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from fink.config import fink_home
from fink.errors import FinkError
from fink.io import kafka

#: SCRAM iterations (Kafka's minimum is 4096)
ITERATIONS = 8192
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's own rule for topic names


class AccessError(FinkError, ValueError):
    """A user or grant request is invalid or was refused by the broker."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise AccessError(f"user name {name!r}: use a letter then letters, digits, '.', '_' or '-' (64 at most)")
    return name


def password_file(name: str, home: Path | None = None) -> Path:
    """Where the operator's copy of ``name``'s password is kept (mode 0600)."""
    return (home or fink_home()) / "secrets" / "users" / _check_name(name)


def _admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient(kafka.client_config(bootstrap))


def _result(futures, what: str) -> None:
    for future in (futures.values() if isinstance(futures, dict) else futures):
        try:
            future.result(30)
        except Exception as exc:  # confluent wraps the broker's error
            raise AccessError(f"{what}: {exc}") from exc


def _applied(what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until the broker serves a change its controller accepted (KRaft applies it a moment later).

    Without it a grant right after ``add_user`` could meet "no such user", and a consumer
    right after ``grant`` or ``revoke`` could still be refused or let in.
    """
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AccessError(f"{what}: accepted, but the broker does not apply it after {timeout:.0f} s")
        time.sleep(0.1)


def _user_acls(admin, name: str, topic: str | None) -> set[tuple]:
    """``name``'s read/describe grants on ``topic`` and its ``_schema`` topic (all of theirs if None)."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{name}", None,
                             AclOperation.ANY, AclPermissionType.ANY)
    try:
        found = admin.describe_acls(query).result(30)
    except Exception as exc:  # noqa: BLE001
        raise AccessError(f"list {name}'s grants: {exc}") from exc
    names = None if topic is None else {topic, f"{topic}_schema"}
    return {(b.restype, b.name, b.operation) for b in found
            if names is None or (b.restype.name == "TOPIC" and b.name in names)}


def add_user(bootstrap: str, name: str, password: str | None = None, home: Path | None = None) -> Path:
    """Create (or reset) ``name``'s SCRAM-SHA-512 credential; return the 0600 file holding the password."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

    _check_name(name)
    password = password or secrets.token_urlsafe(24)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS)
    admin = _admin(bootstrap)  # kept alive until the futures are done
    _result(admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(name, info, password.encode())]), f"add user {name}")
    _applied(f"add user {name}", lambda: name in users(bootstrap))
    path = password_file(name, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.chmod(path, 0o600)
    return path


def _bindings(name: str, topic: str | None):
    from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

    principal = f"User:{_check_name(name)}"
    allow = AclPermissionType.ALLOW
    out = []
    if topic is not None:
        for t in (topic, f"{topic}_schema"):
            for op in (AclOperation.READ, AclOperation.DESCRIBE):
                out.append(AclBinding(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, principal, "*", op, allow))
    else:  # consumer groups named "<user>-...": a bare "<user>" prefix would give alice the groups of alicia
        out.append(AclBinding(ResourceType.GROUP, group_prefix(name), ResourcePatternType.PREFIXED, principal, "*",
                              AclOperation.READ, allow))
    return out


def group_prefix(name: str) -> str:
    """What the ids of ``name``'s consumer groups start with."""
    return f"{_check_name(name)}-"


def _check_topic(bootstrap: str, topic: str) -> None:
    """Refuse to grant anything but a distribution topic: one that exists with its ``_schema`` topic,
    and is neither internal (``__*``), a ``_schema`` topic nor the delivery log."""
    from fink.io.delivery import LOG_TOPIC

    why = None
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        why = "not a topic name (a grant names one topic: no '*', no pattern)"
    elif topic.startswith("_") or topic == LOG_TOPIC or topic.endswith("_schema"):
        why = "a topic of the broker itself"
    else:
        found = kafka.topics(bootstrap)
        if topic not in found:
            why = "no such topic on the broker (run distribution first)"
        elif f"{topic}_schema" not in found:
            why = f"no {topic}_schema topic beside it"
    if why:
        raise AccessError(f"grant {topic!r}: not a distribution topic: {why}")


#: the iteration count that marks a removed user's credential (see :func:`remove_user`)
REMOVED_ITERATIONS = 4099


def users(bootstrap: str) -> list[str]:
    """The users with a SCRAM credential (removed ones excepted)."""
    admin = _admin(bootstrap)
    future = admin.describe_user_scram_credentials()
    try:
        found = future.result(30)
    except Exception as exc:  # noqa: BLE001
        raise AccessError(f"list users: {exc}") from exc
    return sorted(name for name, description in found.items()
                  if any(info.iterations != REMOVED_ITERATIONS for info in description.scram_credential_infos))


def grant(bootstrap: str, name: str, topic: str) -> None:
    """Let ``name`` read the distribution topic ``topic`` (and its ``_schema`` topic) with groups
    whose id starts with ``<name>-``.

    Raises
    ------
    AccessError
        If ``name`` has no credential, or ``topic`` is not a distribution topic (``*``, an
        internal topic, the delivery log, a ``_schema`` or survey topic, an absent one).
    """
    if name not in users(bootstrap):
        raise AccessError(f"grant {topic} to {name}: no such user (add it first: fink users add {name})")
    _check_topic(bootstrap, topic)
    admin = _admin(bootstrap)
    _drop_bare_group_prefix(admin, name)
    bindings = _bindings(name, topic) + _bindings(name, None)
    _result(admin.create_acls(bindings), f"grant {topic} to {name}")
    wanted = {(b.restype, b.name, b.operation) for b in bindings}
    _applied(f"grant {topic} to {name}", lambda: wanted <= _user_acls(admin, name, None))


def _drop_bare_group_prefix(admin, name: str) -> None:
    """Delete the group grant of earlier versions (prefix ``<name>``, no dash), if there is one."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    old = AclBindingFilter(ResourceType.GROUP, name, ResourcePatternType.PREFIXED, f"User:{name}", None,
                           AclOperation.READ, AclPermissionType.ALLOW)
    _result(admin.delete_acls([old]), f"drop {name}'s former group grant")


def revoke(bootstrap: str, name: str, topic: str) -> None:
    """Take back ``name``'s read access to ``topic``."""
    from confluent_kafka.admin import AclBindingFilter

    filters = [AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation,
                                b.permission_type) for b in _bindings(name, topic)]
    admin = _admin(bootstrap)
    _result(admin.delete_acls(filters), f"revoke {topic} from {name}")
    gone = {(b.restype, b.name, b.operation) for b in _bindings(name, topic)}
    _applied(f"revoke {topic} from {name}", lambda: not gone & _user_acls(admin, name, topic))


def grants(bootstrap: str) -> dict[str, list[str]]:
    """User -> the topics they may read (``_schema`` topics left out)."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    query = AclBindingFilter(ResourceType.TOPIC, None, ResourcePatternType.ANY, None, None, AclOperation.READ,
                             AclPermissionType.ALLOW)
    admin = _admin(bootstrap)
    try:
        found = admin.describe_acls(query).result(30)
    except Exception as exc:  # noqa: BLE001
        raise AccessError(f"list grants: {exc}") from exc
    out: dict[str, list[str]] = {u: [] for u in users(bootstrap)}
    for b in found:
        user = b.principal.split(":", 1)[1]
        if not b.name.endswith("_schema"):
            out.setdefault(user, []).append(b.name)
    return {u: sorted(t) for u, t in sorted(out.items())}


def remove_user(bootstrap: str, name: str, home: Path | None = None) -> None:
    """Remove ``name``: every ACL of theirs, their credential replaced by one of a random
    password nobody holds (marked :data:`REMOVED_ITERATIONS`: :func:`users` leaves it out), and
    the operator's copy of the password.

    Notes
    -----
    The credential is replaced, not deleted: on this KRaft broker (Kafka 4.1), once a
    ``RemoveUserScramCredentialRecord`` is in the metadata log, every SCRAM credential is gone
    after the broker's next restart (the service account's and every user's; reproduced: add
    two users, delete one, restart, neither the other nor the service account can log in).
    """
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = _admin(bootstrap)
    query = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{_check_name(name)}", None,
                             AclOperation.ANY, AclPermissionType.ANY)
    _result(admin.delete_acls([query]), f"remove {name}'s grants")
    if name in users(bootstrap):
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, REMOVED_ITERATIONS)
        _result(admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, secrets.token_bytes(32))]), f"remove user {name}")
    _applied(f"remove user {name}", lambda: name not in users(bootstrap) and not _user_acls(admin, name, None))
    password_file(name, home).unlink(missing_ok=True)
