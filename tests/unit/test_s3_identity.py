"""client/s3/identity.py: one connection per user, made from that user's key file, kept
while a request holds it and closed once idle; a user without a key file is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from client.s3.errors import S3Error
from client.s3.identity import UserClients


class FakeClient:
    def __init__(self, key: Path) -> None:
        self.key, self.closed = key, False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "users").mkdir()
    for u in ("alice", "bob"):
        (tmp_path / "users" / f"{u}.key_secret").write_text("k")
    clock = [100.0]
    made: list[FakeClient] = []

    def make(key: Path) -> FakeClient:
        made.append(FakeClient(key))
        return made[-1]

    p = UserClients(tmp_path, make, idle=10.0, now=lambda: clock[0])  # type: ignore[arg-type]
    return p, clock, made


def test_one_client_per_user_from_its_key_file(pool, tmp_path):
    p, clock, made = pool
    with p.lease("alice") as a1, p.lease("alice") as a2, p.lease("bob") as b:
        assert a1 is a2 and a1 is not b
        assert a1.key == tmp_path / "users" / "alice.key_secret"
    assert len(made) == 2 and p.open_users() == ["alice", "bob"]


def test_idle_clients_are_closed_but_never_one_in_use(pool):
    p, clock, made = pool
    with p.lease("alice"):
        pass
    with p.lease("bob"):
        clock[0] += 60
        with p.lease("bob"):            # the sweep runs here: alice idle, bob held
            pass
        assert made[0].closed and not made[1].closed
        assert p.open_users() == ["bob"]
    with p.lease("alice") as again:     # a new connection for alice
        assert again is not made[0] and not again.closed
    p.close()
    assert all(c.closed for c in made)


@pytest.mark.parametrize("user", ["carol", "../alice", "Alice"])
def test_a_user_without_a_key_file_is_access_denied(pool, user):
    p, clock, made = pool
    with pytest.raises(S3Error) as e:
        with p.lease(user):
            pass
    assert e.value.code == "AccessDenied" and not made
    if user == "carol":
        assert "aegisfs user add carol" in e.value.message
