"""fink.io.access waits until the broker serves a change its controller accepted (stand-in admin client, no broker)."""

import pytest

from fink.io import access


class Done:
    def __init__(self, value=None):
        self.value = value

    def result(self, timeout=None):
        return self.value


class Admin:
    """Accepts ACLs at once; describes them only after ``lag`` more calls (the broker applying them)."""

    def __init__(self, lag):
        self.lag, self.acls, self.describes = lag, [], 0

    def create_acls(self, bindings):
        self.pending = list(bindings)
        return {b: Done() for b in bindings}

    def delete_acls(self, filters):
        self.pending = []
        return {f: Done() for f in filters}

    def describe_acls(self, query):
        self.describes += 1
        if self.describes > self.lag:
            self.acls = self.pending
        return Done(self.acls)


@pytest.fixture
def admin(monkeypatch):
    a = Admin(lag=3)
    monkeypatch.setattr(access, "_admin", lambda bootstrap: a)
    monkeypatch.setattr(access, "users", lambda bootstrap: ["alice"])
    monkeypatch.setattr(access.kafka, "topics", lambda bootstrap: {"early_snia", "early_snia_schema"})
    monkeypatch.setattr(access.time, "sleep", lambda s: None)
    return a


def test_grant_returns_once_the_broker_describes_every_binding(admin):
    access.grant("127.0.0.1:1", "alice", "early_snia")
    assert admin.describes == 4
    assert {(b.name, b.operation.name) for b in admin.acls} == {
        ("early_snia", "READ"), ("early_snia", "DESCRIBE"), ("early_snia_schema", "READ"),
        ("early_snia_schema", "DESCRIBE"), ("alice-", "READ")}


def test_revoke_returns_once_the_broker_describes_none(admin):
    access.grant("127.0.0.1:1", "alice", "early_snia")
    admin.describes, admin.lag = 0, 2
    access.revoke("127.0.0.1:1", "alice", "early_snia")
    assert admin.describes == 3 and admin.acls == []


def test_a_change_the_broker_never_applies_is_a_clear_error(admin, monkeypatch):
    admin.lag = 10**9
    clock = iter(range(0, 10**6, 5))
    monkeypatch.setattr(access.time, "monotonic", lambda: next(clock))
    with pytest.raises(access.AccessError, match="grant early_snia to alice: accepted, but the broker does not apply"):
        access.grant("127.0.0.1:1", "alice", "early_snia")
