"""Leases: how a worker holds an evaluation job.

Every start of a job is a lease: a local worker's (an asyncio task of the server, no
expiry: it ends with the server) or a remote worker's (an ``agentfleet eval-worker``
process or a Ray actor, over HTTP), which must heartbeat within ``ttl_s``. The store
keeps the lease id of the start that holds each job and stores a result only under it
(:meth:`~agentfleet.evaluation.store.JobStore.finish`): when a remote lease expires, the
job is released (queued again, no lease) and its late result is refused, so a job is
reported and stored once whatever its workers do.

A remote worker names the lease it asks for (``lease_id`` of its ask), so a worker stopped
while its ask is in flight can hand that lease back without having read the answer; an id
handed back before it was granted is retired (never granted), so the job waits for no
expiry either way.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LEASE_TTL_S = 30.0  # a remote worker's lease lapses this long after its last heartbeat
SEEN_FOR_S = 120.0  # a remote worker that asked for work this recently is listed as idle
RETIRED_FOR_S = 600.0  # an id handed back before its grant stays unusable this long...
RETIRED_MAX = 10_000  # ...and the newest this many of them (longer than any ask: 60 s)


class LeaseLost(Exception):
    """The lease is unknown or expired: its job went back to the queue (or is done)."""


@dataclass
class Lease:
    id: str
    job_id: str
    worker: str
    node: str | None
    cpus: str | None
    remote: bool
    started: float  # wall clock (epoch s)
    expires: float = math.inf  # monotonic; inf for a local lease

    def view(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "node": self.node,
            "cpus": self.cpus,
            "remote": self.remote,
            "job_id": self.job_id,
        }  # no lease id: /healthz shows this to anyone


@dataclass
class _Seen:
    node: str | None
    cpus: str | None
    at: float


@dataclass
class LeaseBook:
    """The leases alive in this server, and the remote workers seen lately."""

    ttl_s: float = DEFAULT_LEASE_TTL_S
    clock: Callable[[], float] = time.monotonic
    _leases: dict[str, Lease] = field(default_factory=dict)
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _retired: OrderedDict[str, float] = field(default_factory=OrderedDict)  # id -> when

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError("lease ttl must be > 0 seconds")

    def grant(
        self,
        job_id: str,
        worker: str,
        *,
        node: str | None = None,
        cpus: str | None = None,
        remote: bool = False,
        lease_id: str | None = None,
    ) -> Lease:
        """A new lease on ``job_id``, under ``lease_id`` if given (check :meth:`usable`
        first)."""
        lease = Lease(
            id=lease_id or uuid.uuid4().hex,
            job_id=job_id,
            worker=worker,
            node=node,
            cpus=cpus,
            remote=remote,
            started=time.time(),
            expires=self.clock() + self.ttl_s if remote else math.inf,
        )
        self._leases[lease.id] = lease
        return lease

    def renew(self, lease_id: str) -> Lease:
        """Push the expiry of a live remote lease ``ttl_s`` ahead; :class:`LeaseLost` if
        it is unknown or already past its expiry."""
        lease = self._leases.get(lease_id)
        if lease is None or lease.expires <= self.clock():
            raise LeaseLost(f"lease {lease_id!r} is unknown or expired")
        if lease.remote:
            lease.expires = self.clock() + self.ttl_s
            self.note(lease.worker, lease.node, lease.cpus)
        return lease

    def end(self, lease_id: str) -> Lease | None:
        """Remove a lease (its job finished or was given up); None if it was not live."""
        return self._leases.pop(lease_id, None)

    def hand_back(self, lease_id: str) -> Lease:
        """Remove and return a live remote lease its worker gives up; :class:`LeaseLost`
        if it is unknown, expired, or a local worker's. An unknown id is retired: a
        worker stopped while asking for it hands it back before it is granted."""
        lease = self._leases.get(lease_id)
        if lease is None:
            self._retire(lease_id)
        if lease is None or not lease.remote or lease.expires <= self.clock():
            raise LeaseLost(f"lease {lease_id!r} is unknown or expired")
        del self._leases[lease_id]
        return lease

    def usable(self, lease_id: str | None) -> bool:
        """Whether a worker's own ``lease_id`` may be granted: not live, not retired."""
        if lease_id is None:
            return True
        self._expire_retired()
        return lease_id not in self._leases and lease_id not in self._retired

    def _retire(self, lease_id: str) -> None:
        self._retired[lease_id] = self.clock()
        self._retired.move_to_end(lease_id)
        self._expire_retired()

    def _expire_retired(self) -> None:
        horizon = self.clock() - RETIRED_FOR_S
        while self._retired and (
            len(self._retired) > RETIRED_MAX or next(iter(self._retired.values())) < horizon
        ):
            self._retired.popitem(last=False)

    def take_expired(self) -> list[Lease]:
        """Remove and return the remote leases past their expiry."""
        now = self.clock()
        gone = [lease for lease in self._leases.values() if lease.expires <= now]
        for lease in gone:
            del self._leases[lease.id]
        return gone

    def live(self, lease_id: str) -> bool:
        lease = self._leases.get(lease_id)
        return lease is not None and lease.expires > self.clock()

    def remote_count(self) -> int:
        return sum(1 for lease in self._leases.values() if lease.remote)

    def note(self, worker: str, node: str | None, cpus: str | None) -> None:
        """A remote worker asked for work (or heartbeats): listed for ``SEEN_FOR_S``."""
        self._seen[worker] = _Seen(node, cpus, self.clock())

    def remote_view(self) -> list[dict[str, Any]]:
        """Remote workers: each busy one with its job, then those seen lately, idle."""
        horizon = self.clock() - SEEN_FOR_S
        for name in [n for n, s in self._seen.items() if s.at < horizon]:
            del self._seen[name]
        busy = [lease.view() for lease in self._leases.values() if lease.remote]
        names = {b["worker"] for b in busy}
        idle = [
            {"worker": name, "node": s.node, "cpus": s.cpus, "remote": True, "job_id": None}
            for name, s in self._seen.items()
            if name not in names
        ]
        return busy + idle


__all__ = ["DEFAULT_LEASE_TTL_S", "Lease", "LeaseBook", "LeaseLost"]
