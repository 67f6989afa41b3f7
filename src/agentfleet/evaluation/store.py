"""SQLite job store of the evaluation server (aiosqlite, WAL mode).

A job goes ``queued`` -> ``running`` -> ``done`` | ``failed``. It is marked ``running``
before its evaluation starts and gets its result in one statement afterwards, guarded by
``status = 'running'``: a result lands at most once. Jobs found ``queued`` or ``running``
when a server starts (it was stopped or killed) are run again; a job interrupted mid-run
never had its result stored, so its re-run is its only completion. Each start writes a
new lease id into the row, and a result lands only under the lease that holds the job: a
worker whose lease expired (:meth:`JobStore.release`) or was replaced cannot store it.
The manager fails a job
started too many times (:meth:`JobStore.fail_unfinished`) and prunes old finished jobs
(:meth:`JobStore.prune`).

The request of a job holds its patch (up to 5 MB): :meth:`JobRecord.summary` and the
``summary=True`` reads leave it out, for what the server keeps in memory.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
TERMINAL = frozenset({DONE, FAILED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    idem_key  TEXT UNIQUE,
    body_hash TEXT NOT NULL,
    request   TEXT NOT NULL,
    status    TEXT NOT NULL,
    result    TEXT,
    error     TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0,
    created   REAL NOT NULL,
    started   REAL,
    finished  REAL,
    lease     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished);
"""

_COLUMNS = (
    "id, idem_key, body_hash, request, status, result, error, attempts, created, started, finished"
)
PATCH_FIELD = "result"  # the request field that holds the patch
# the same columns, the request without its patch
_SUMMARY_COLUMNS = _COLUMNS.replace("request", f"json_remove(request, '$.{PATCH_FIELD}')", 1)


@dataclass(frozen=True)
class JobRecord:
    id: str
    idem_key: str | None
    body_hash: str
    request: dict[str, Any]
    status: str
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created: float
    started: float | None
    finished: float | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def summary(self) -> JobRecord:
        """This job without its patch (what the server keeps in memory)."""
        if PATCH_FIELD not in self.request:
            return self
        request = {k: v for k, v in self.request.items() if k != PATCH_FIELD}
        return replace(self, request=request)

    @classmethod
    def from_row(cls, row: Any) -> JobRecord:
        return cls(
            id=row[0],
            idem_key=row[1],
            body_hash=row[2],
            request=json.loads(row[3]),
            status=row[4],
            result=json.loads(row[5]) if row[5] is not None else None,
            error=row[6],
            attempts=row[7],
            created=row[8],
            started=row[9],
            finished=row[10],
        )


def _prepare_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


class JobStore:
    """Jobs in one SQLite database; ``path=None`` keeps them in memory (lost at exit)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> JobStore:
        # Autocommit: every statement is its own transaction, one thread hop each.
        if self.path is not None:
            await asyncio.to_thread(_prepare_dir, self.path)
        where = ":memory:" if self.path is None else str(self.path)
        db = await aiosqlite.connect(where, isolation_level=None)
        try:
            if self.path is not None:
                await db.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: durable across a process kill (only an OS crash may lose the tail)
                await db.execute("PRAGMA synchronous=NORMAL")
                await db.execute("PRAGMA busy_timeout=10000")
            await db.executescript(_SCHEMA)
            columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(jobs)")}
            if "lease" not in columns:  # a store written before leases
                await db.execute("ALTER TABLE jobs ADD COLUMN lease TEXT")
        except BaseException:  # e.g. not a database: its thread would keep the process alive
            await db.close()
            raise
        self._db = db
        return self

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def __aenter__(self) -> JobStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("JobStore is not open")
        return self._db

    # writes --------------------------------------------------------------------------
    async def create_or_get(
        self, idem_key: str | None, body_hash: str, request: dict[str, Any]
    ) -> tuple[JobRecord, bool]:
        """Insert a queued job, or return the job already holding ``idem_key``.

        Returns ``(job, created)``. The caller compares ``job.body_hash``.
        """
        job_id = uuid.uuid4().hex
        now = time.time()
        request_json = json.dumps(request)
        rows = await self.db.execute_fetchall(
            "INSERT INTO jobs (id, idem_key, body_hash, request, status, created) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(idem_key) DO NOTHING RETURNING id",
            (job_id, idem_key, body_hash, request_json, QUEUED, now),
        )
        if rows:
            job = JobRecord(
                job_id, idem_key, body_hash, json.loads(request_json), QUEUED,
                None, None, 0, now, None, None,
            )  # fmt: skip
            return job, True
        existing = await self.get_by_key(idem_key) if idem_key is not None else None
        if existing is None:  # pragma: no cover - the conflicting row exists
            raise RuntimeError("idempotency conflict without a stored job")
        return existing, False

    async def mark_running(self, job_id: str, lease: str) -> bool:
        """``queued``/``running`` -> ``running`` under ``lease`` (attempts + 1); any
        earlier lease is void. False if the job is already terminal."""
        rows = await self.db.execute_fetchall(
            "UPDATE jobs SET status = ?, attempts = attempts + 1, started = ?, lease = ? "
            "WHERE id = ? AND status IN (?, ?) RETURNING id",
            (RUNNING, time.time(), lease, job_id, QUEUED, RUNNING),
        )
        return len(list(rows)) == 1

    async def release(self, job_id: str, lease: str, *, counted: bool = True) -> bool:
        """A running job whose ``lease`` expired (or was handed back) -> ``queued``, no
        lease: a late result of that lease is refused. ``counted=False`` takes that start
        off ``attempts``. False if the job is no longer held by ``lease``."""
        rows = await self.db.execute_fetchall(
            "UPDATE jobs SET status = ?, lease = NULL, attempts = attempts - ? "
            "WHERE id = ? AND status = ? AND lease = ? RETURNING id",
            (QUEUED, 0 if counted else 1, job_id, RUNNING, lease),
        )
        return len(list(rows)) == 1

    async def finish(
        self,
        job_id: str,
        status: str,
        result: dict[str, Any] | None,
        error: str | None,
        lease: str,
    ) -> bool:
        """Store the outcome of a job running under ``lease``, once. False if it was not
        running, or not under that lease (it expired, or another start replaced it)."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status!r}")
        rows = await self.db.execute_fetchall(
            "UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? "
            "WHERE id = ? AND status = ? AND lease = ? RETURNING id",
            (
                status,
                json.dumps(result) if result is not None else None,
                error,
                time.time(),
                job_id,
                RUNNING,
                lease,
            ),
        )
        return len(list(rows)) == 1

    async def fail_unfinished(self, job_id: str, result: dict[str, Any], error: str) -> bool:
        """A ``queued`` / ``running`` job -> ``failed`` (it will not run again)."""
        rows = await self.db.execute_fetchall(
            "UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? "
            "WHERE id = ? AND status IN (?, ?) RETURNING id",
            (FAILED, json.dumps(result), error, time.time(), job_id, QUEUED, RUNNING),
        )
        return len(list(rows)) == 1

    async def prune(self, finished_before: float) -> int:
        """Delete the jobs that finished before ``finished_before`` (epoch s); their count.
        Unfinished jobs are never pruned."""
        rows = await self.db.execute_fetchall(
            "DELETE FROM jobs WHERE status IN (?, ?) AND finished < ? RETURNING id",
            (DONE, FAILED, finished_before),
        )
        return len(list(rows))

    # reads ---------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobRecord | None:
        rows = list(
            await self.db.execute_fetchall(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        )
        return JobRecord.from_row(rows[0]) if rows else None

    async def get_by_key(self, idem_key: str) -> JobRecord | None:
        rows = list(
            await self.db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM jobs WHERE idem_key = ?", (idem_key,)
            )
        )
        return JobRecord.from_row(rows[0]) if rows else None

    async def unfinished(self, *, summary: bool = False) -> list[JobRecord]:
        """Jobs left ``queued`` or ``running``, oldest first (``summary``: no patches)."""
        columns = _SUMMARY_COLUMNS if summary else _COLUMNS
        async with self.db.execute(
            f"SELECT {columns} FROM jobs WHERE status IN (?, ?) ORDER BY created, rowid",
            (QUEUED, RUNNING),
        ) as cur:
            rows = await cur.fetchall()
        return [JobRecord.from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        async with self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status") as cur:
            rows = await cur.fetchall()
        return {str(status): int(n) for status, n in rows}
