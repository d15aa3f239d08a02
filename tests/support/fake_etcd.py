"""An in-memory etcd with the interface of mds.etcd.Gateway, on a FakeClock: leases that
expire (taking their keys with them), revisions that only grow, the guarded transactions
of the "ran alone" mark, and a switch that makes every call fail as if etcd were down."""
from __future__ import annotations

from mds.etcd import EtcdUnavailable, Held

from .clock import FakeClock


class FakeEtcd:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.revision = 1
        self.leases: dict[int, float] = {}            # id -> expiry time
        self.ttls: dict[int, int] = {}
        self.keys: dict[bytes, Held] = {}
        self.down = False
        self.calls = 0
        self._next_lease = 0x100

    def _expire(self) -> None:
        now = self.clock()
        for lease, end in list(self.leases.items()):
            if now >= end:
                del self.leases[lease]
                for key, held in list(self.keys.items()):
                    if held.lease == lease:
                        del self.keys[key]
                        self.revision += 1

    def _enter(self) -> None:
        self.calls += 1
        if self.down:
            raise EtcdUnavailable("fake etcd is down")
        self._expire()

    def grant(self, ttl: int) -> tuple[int, int]:
        self._enter()
        self._next_lease += 1
        self.leases[self._next_lease] = self.clock() + ttl
        self.ttls[self._next_lease] = ttl
        return self._next_lease, ttl

    def keepalive(self, lease: int) -> int:
        self._enter()
        if lease not in self.leases:
            return 0
        self.leases[lease] = self.clock() + self.ttls[lease]
        return self.ttls[lease]

    def revoke(self, lease: int) -> None:
        self._enter()
        self.leases[lease] = self.clock()     # expires now
        self._expire()

    def create(self, key: bytes, value: bytes, lease: int) -> Held:
        self._enter()
        held = self.keys.get(key)
        if held is not None:
            return held._replace(won=False)
        if lease not in self.leases:
            raise EtcdUnavailable("requested lease not found")
        self.revision += 1
        self.keys[key] = Held(False, self.revision, value, lease, self.revision)
        return Held(True, self.revision, value, lease)

    def campaign(self, key: bytes, value: bytes, lease: int, mark: bytes,
                 mark_mod: int) -> Held:
        self._enter()
        held, marked = self.keys.get(key), self.keys.get(mark)
        if held is not None:
            return held._replace(won=False)
        if (marked.mod_revision if marked else 0) != mark_mod:
            return Held(False, 0, b"", 0)
        return self.create(key, value, lease)

    def _leader_is(self, leader: bytes, epoch: int) -> bool:
        held = self.keys.get(leader)
        return held is not None and held.create_revision == epoch

    def put_if_leader(self, key: bytes, value: bytes, leader: bytes, epoch: int) -> bool:
        self._enter()
        if not self._leader_is(leader, epoch):
            return False
        self.revision += 1
        old = self.keys.get(key)
        self.keys[key] = Held(False, old.create_revision if old else self.revision, value, 0,
                              self.revision)
        return True

    def delete_if_leader(self, key: bytes, leader: bytes, epoch: int) -> bool:
        self._enter()
        if not self._leader_is(leader, epoch):
            return False
        if self.keys.pop(key, None) is not None:
            self.revision += 1
        return True

    def get(self, key: bytes) -> Held | None:
        self._enter()
        held = self.keys.get(key)
        return held._replace(won=False) if held else None

    def restart(self) -> None:
        """etcd back after a restart: every lease gets its full TTL again."""
        self.down = False
        for lease in self.leases:
            self.leases[lease] = self.clock() + self.ttls[lease]
