"""The durable job store: one SQLite file (WAL) in the data directory; jobs survive restart, crash and kill -9.

Durability: every state change is one `BEGIN IMMEDIATE` transaction, and the file runs with
`journal_mode=WAL` + `synchronous=FULL`. WAL alone (with NORMAL) already keeps every committed
transaction across a crash or `kill -9` of the process, because the WAL pages are in the OS page
cache; FULL also fsyncs the WAL at each commit, so a submit that was acknowledged survives a
power loss too ("nothing they queue is lost"). That costs one fsync (~0.4 ms here) per state
change, which is nothing next to a job that runs for seconds.

Run order: queued jobs run by `priority` (higher first), then by `number` (lower first).
`number` is ComfyUI's queue number: a counter that only grows (never reused, even after deletes).
`front=True` stores the *negated* counter, as ComfyUI does, so a front job runs before every job
of the same priority, and the latest front job runs first. Priority still wins over `front`;
ComfyUI clients all submit at priority 0, for whom `front` means "next".

Thread safety: one connection guarded by a lock (the event loop and the worker thread share a
`JobStore`); other processes on the same file are serialised by SQLite's own locking.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from athena.errors import AthenaError, ConfigError

DB_FILENAME = "jobs.sqlite3"  # the store's file inside the data directory
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------- types and errors


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Job:
    """One submitted prompt and everything the store knows about it (a snapshot; re-`get` for news)."""

    id: str
    number: int  # ComfyUI's queue number; negative for `front` submissions
    status: JobStatus
    priority: int
    client_id: str | None
    idempotency_key: str | None
    prompt: dict[str, Any]  # the API-format prompt to run
    extra: dict[str, Any]  # ComfyUI extra_data (extra_pnginfo, ...) plus what the server keeps
    outputs: dict[str, Any]  # node id -> UI outputs ({"images": [{filename, subfolder, type}]})
    error: dict[str, Any] | None  # {node_id, node_type, message, exception_type, traceback} or a reason
    files: list[str]  # output files the job wrote, relative to the output directory
    attempts: int  # how many times a worker claimed it
    worker: str | None  # who claimed it last
    created: float
    started: float | None
    finished: float | None


class StoreError(AthenaError):
    """The job store file cannot be used (not a job store, or written by a newer Athena)."""


class QueueFull(AthenaError):
    """`max_queued` jobs are already waiting; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownJob(AthenaError, LookupError):
    """No job has this id."""


class JobStateError(AthenaError):
    """The job is not in a status that allows the operation (e.g. finishing a job twice)."""


# ---------------------------------------------------------------- schema

# _MIGRATIONS[v] takes a file from schema version v to v + 1 (`PRAGMA user_version`).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (key, value) VALUES ('number', 0)",
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            number INTEGER NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            priority INTEGER NOT NULL,
            client_id TEXT,
            idempotency_key TEXT,
            prompt TEXT NOT NULL,
            extra TEXT NOT NULL,
            outputs TEXT NOT NULL,
            error TEXT,
            files TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            worker TEXT,
            created REAL NOT NULL,
            started REAL,
            finished REAL,
            CHECK ((finished IS NULL) = (status IN ('queued', 'running')))
        )""",
        "CREATE INDEX jobs_run_order ON jobs (status, priority DESC, number)",
        "CREATE INDEX jobs_finished ON jobs (finished) WHERE finished IS NOT NULL",
        "CREATE INDEX jobs_client ON jobs (client_id, seq)",
        # coalesce: NULLs are distinct in a UNIQUE index, and a key without a client is still a key
        ("CREATE UNIQUE INDEX jobs_idempotency ON jobs (coalesce(client_id, ''), idempotency_key)"
         " WHERE idempotency_key IS NOT NULL"),
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = ("id, number, status, priority, client_id, idempotency_key, prompt, extra, outputs, error, files,"
            " attempts, worker, created, started, finished")
_RUN_ORDER = "ORDER BY priority DESC, number ASC"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0], number=row[1], status=JobStatus(row[2]), priority=row[3], client_id=row[4],
        idempotency_key=row[5], prompt=json.loads(row[6]), extra=json.loads(row[7]),
        outputs=json.loads(row[8]), error=None if row[9] is None else json.loads(row[9]),
        files=json.loads(row[10]), attempts=row[11], worker=row[12], created=row[13],
        started=row[14], finished=row[15],
    )


def _where(status: Iterable[JobStatus] | None, client_id: str | None) -> tuple[str, list[Any]]:
    """A WHERE clause (or "") and its arguments for a status set and a client."""
    clauses: list[str] = []
    args: list[Any] = []
    if status is not None:
        statuses = [JobStatus(s).value for s in status]
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})" if statuses else "0")
        args += statuses
    if client_id is not None:
        clauses.append("client_id = ?")
        args.append(client_id)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _remove_files(files: Iterable[str], output_dir: Path) -> None:
    """Unlink each file that lies inside `output_dir`; refuse absolute paths, `..` and symlinks leading out."""
    root = output_dir.resolve()
    for name in files:
        rel = Path(name)
        # Resolve follows every symlink, including the last component: a link pointing outside is
        # refused rather than unlinked, so nothing outside the output directory is ever touched.
        target = (root / rel).resolve()
        if rel.is_absolute() or ".." in rel.parts or not target.is_relative_to(root) or target == root:
            _log.warning("not deleting %r: it is outside the output directory %s", name, root)
            continue
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a directory, permissions: keep going, the job row is already gone
            _log.warning("could not delete output file %s: %s", target, e)


# ---------------------------------------------------------------- store


class JobStore:
    """Jobs in one SQLite file; safe to share between threads and between processes."""

    def __init__(self, path: Path, *, max_queued: int = 1000, keep_count: int | None = 10_000,
                 keep_seconds: float | None = None, clock: Callable[[], float] = time.time) -> None:
        if max_queued < 1:
            raise ConfigError(f"max_queued={max_queued} must be at least 1")
        if keep_count is not None and keep_count < 0:
            raise ConfigError(f"keep_count={keep_count} must be >= 0 (or None to keep every finished job)")
        if keep_seconds is not None and keep_seconds < 0:
            raise ConfigError(f"keep_seconds={keep_seconds} must be >= 0 (or None to keep jobs of any age)")
        self.path = Path(path)
        self.max_queued = max_queued
        self.keep_count = keep_count
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; every write is an explicit BEGIN IMMEDIATE.
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            self._open()
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"{self.path}: not a usable SQLite job store ({e}); move it away or use another"
                             f" --data-dir") from e
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        db = self._db
        assert db is not None
        db.execute("PRAGMA busy_timeout = 30000")  # another process mid-transaction: wait, don't fail
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put --data-dir on a local disk")
        db.execute("PRAGMA synchronous = FULL")
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has job store schema {version}, but this Athena reads up to {SCHEMA_VERSION}:"
                    f" it was written by a newer Athena; upgrade Athena or use another --data-dir")
            if version == 0 and db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]:
                raise StoreError(f"{self.path} is an SQLite file but not an Athena job store; use another --data-dir")
            for migration in _MIGRATIONS[version:]:
                for statement in migration:
                    db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                raise StoreError(f"{self.path}: the job store is closed")
            yield self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding SQLite's write lock from the start, so read-then-write is atomic across processes."""
        with self._read() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # some SQLite errors (disk full) have rolled back already
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ submit and read

    def submit(self, prompt: Mapping[str, Any], *, extra: Mapping[str, Any] | None = None,
               client_id: str | None = None, priority: int = 0, front: bool = False,
               idempotency_key: str | None = None, job_id: str | None = None) -> tuple[Job, bool]:
        """Queue `prompt`; returns (job, created). A repeated `idempotency_key` (per client) returns the first job."""
        if not isinstance(prompt, Mapping):
            raise ConfigError(f"prompt must be a JSON object (node id -> node), got {type(prompt).__name__}")
        if job_id is not None and (not isinstance(job_id, str) or not job_id or len(job_id) > 200):
            raise ConfigError(f"job id {job_id!r} must be a non-empty string of at most 200 characters")
        job_id = job_id if job_id is not None else str(uuid.uuid4())
        prompt_json, extra_json = _dumps(dict(prompt)), _dumps(dict(extra or {}))
        with self._write() as db:
            if idempotency_key is not None:
                row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE coalesce(client_id, '') = ?"
                                 " AND idempotency_key = ?", (client_id or "", idempotency_key)).fetchone()
                if row is not None:
                    return _job(row), False
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None:
                raise ConfigError(f"a job with id {job_id!r} already exists; send a new id or none")
            queued = db.execute("SELECT count(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if queued >= self.max_queued:
                retry_after = self._retry_after(db)
                raise QueueFull(f"the queue is full ({queued} jobs waiting, max_queued={self.max_queued});"
                                f" retry in {retry_after:.0f} s", retry_after)
            counter = db.execute("UPDATE meta SET value = value + 1 WHERE key = 'number' RETURNING value").fetchone()[0]
            row = db.execute(
                f"INSERT INTO jobs (id, number, status, priority, client_id, idempotency_key, prompt, extra,"
                f" outputs, files, created) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, '{{}}', '[]', ?)"
                f" RETURNING {_COLUMNS}",
                (job_id, -counter if front else counter, priority, client_id, idempotency_key,
                 prompt_json, extra_json, self._clock())).fetchone()
            return _job(row), True

    def _retry_after(self, db: sqlite3.Connection) -> float:
        """A slot frees when the running job ends: guess the mean run time of the last 20 jobs, in [1, 60] s."""
        mean = db.execute(
            "SELECT avg(finished - started) FROM (SELECT finished, started FROM jobs"
            " WHERE finished IS NOT NULL AND started IS NOT NULL ORDER BY finished DESC LIMIT 20)").fetchone()[0]
        return 5.0 if mean is None else min(max(float(mean), 1.0), 60.0)

    def get(self, job_id: str) -> Job | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, *, status: Iterable[JobStatus] | None = None, client_id: str | None = None,
             limit: int | None = 100, offset: int = 0, newest_first: bool = True) -> list[Job]:
        """Jobs in submission order (newest first by default), filtered by status and client."""
        where, args = _where(status, client_id)
        order = "DESC" if newest_first else "ASC"
        with self._read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY seq {order} LIMIT ? OFFSET ?",
                              (*args, -1 if limit is None else limit, offset)).fetchall()
        return [_job(r) for r in rows]

    def queued(self, limit: int | None = None) -> builtins.list[Job]:
        """Queued jobs in the order they will run (what ComfyUI's `/queue` lists as pending)."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE status = 'queued' {_RUN_ORDER} LIMIT ?",
                              (-1 if limit is None else limit,)).fetchall()
        return [_job(r) for r in rows]

    def position(self, job_id: str) -> int | None:
        """How many queued jobs run before this one (0 = next); None if it is not queued."""
        with self._read() as db:
            row = db.execute("SELECT priority, number FROM jobs WHERE id = ? AND status = 'queued'",
                             (job_id,)).fetchone()
            if row is None:
                return None
            ahead: int = db.execute(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND (priority > ? OR (priority = ? AND number < ?))",
                (row[0], row[0], row[1])).fetchone()[0]
        return ahead

    def counts(self) -> dict[JobStatus, int]:
        with self._read() as db:
            rows = db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update({JobStatus(s): n for s, n in rows})
        return counts

    # ------------------------------------------------------------ state changes

    def claim(self, worker: str) -> Job | None:
        """Atomically move the next queued job to running (attempts + 1); None if the queue is empty."""
        with self._write() as db:
            row = db.execute(
                f"UPDATE jobs SET status = 'running', attempts = attempts + 1, started = ?, worker = ?"
                f" WHERE id = (SELECT id FROM jobs WHERE status = 'queued' {_RUN_ORDER} LIMIT 1)"
                f" RETURNING {_COLUMNS}", (self._clock(), worker)).fetchone()
        return None if row is None else _job(row)

    def finish(self, job_id: str, status: JobStatus, *, outputs: Mapping[str, Any] | None = None,
               error: Mapping[str, Any] | None = None, files: Sequence[str] | None = None) -> Job:
        """End a running job. A job ends exactly once: finishing a job that is not running raises `JobStateError`."""
        status = JobStatus(status)
        if status not in FINISHED:
            raise ConfigError(f"finish(status={status.value!r}): a job finishes as one of "
                              f"{sorted(s.value for s in FINISHED)}")
        if files is not None and not all(isinstance(f, str) for f in files):
            raise ConfigError(f"files must be paths relative to the output directory (strings), got {files!r}")
        with self._write() as db:
            current = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if current is None:
                raise UnknownJob(f"no job has id {job_id!r}")
            if current[0] != JobStatus.RUNNING:
                raise JobStateError(f"job {job_id!r} is {current[0]}, not running; a job finishes exactly once")
            row = db.execute(
                f"UPDATE jobs SET status = ?, outputs = ?, error = ?, files = ?, finished = ? WHERE id = ?"
                f" RETURNING {_COLUMNS}",
                (status.value, _dumps(dict(outputs or {})), None if error is None else _dumps(dict(error)),
                 _dumps(list(files or [])), self._clock(), job_id)).fetchone()
        return _job(row)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False if it is not queued (a running job is interrupted by its worker)."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                (self._clock(), job_id)).rowcount
        return changed == 1

    def recover(self, *, max_attempts: int = 2) -> builtins.list[Job]:
        """At start-up: re-queue jobs a dead process left running, or fail those claimed `max_attempts` times."""
        if max_attempts < 1:
            raise ConfigError(f"max_attempts={max_attempts} must be at least 1")
        with self._write() as db:
            rows = db.execute(f"SELECT id, attempts FROM jobs WHERE status = 'running' {_RUN_ORDER}").fetchall()
            changed = []
            for job_id, attempts in rows:
                args: tuple[Any, ...] = ()
                if attempts < max_attempts:
                    sql = "status = 'queued', started = NULL, worker = NULL"
                else:
                    times = {1: "once", 2: "twice"}.get(attempts, f"{attempts} times")
                    error = {"message": f"the server stopped {times} while running this job; not retried again",
                             "reason": "server_stopped", "attempts": attempts,
                             "node_id": None, "node_type": None, "exception_type": None, "traceback": []}
                    sql, args = "status = 'failed', error = ?, finished = ?", (_dumps(error), self._clock())
                changed.append(_job(db.execute(f"UPDATE jobs SET {sql} WHERE id = ? RETURNING {_COLUMNS}",
                                               (*args, job_id)).fetchone()))
        return changed

    # ------------------------------------------------------------ deletion and retention

    def delete(self, job_id: str, output_dir: Path) -> bool:
        """Remove a job that is not running, and its files; False if there is no such job or it is running."""
        with self._write() as db:
            row = db.execute("DELETE FROM jobs WHERE id = ? AND status != 'running' RETURNING files",
                             (job_id,)).fetchone()
        if row is None:
            return False
        _remove_files(json.loads(row[0]), output_dir)  # after the commit: a crash here leaks files, never rows
        return True

    def clear(self, statuses: Iterable[JobStatus], output_dir: Path | None = None) -> int:
        """Remove every job in `statuses` (and their files when `output_dir` is given); returns how many."""
        statuses = {JobStatus(s) for s in statuses}
        if JobStatus.RUNNING in statuses:
            raise ConfigError("clear() cannot remove running jobs; interrupt them and let their worker finish them")
        where, args = _where(statuses, None)
        with self._write() as db:
            rows = db.execute(f"DELETE FROM jobs {where} RETURNING files", args).fetchall()
        if output_dir is not None:
            _remove_files((f for (files,) in rows for f in json.loads(files)), output_dir)
        return len(rows)

    def prune(self, output_dir: Path) -> int:
        """History retention: drop finished jobs beyond `keep_count` or older than `keep_seconds`, with their files."""
        with self._write() as db:  # `finished` is set exactly for finished jobs (a CHECK in the schema)
            rows: builtins.list[tuple[str]] = []
            if self.keep_seconds is not None:
                rows += db.execute("DELETE FROM jobs WHERE finished < ?"
                                   " RETURNING files", (self._clock() - self.keep_seconds,)).fetchall()
            if self.keep_count is not None:
                rows += db.execute(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE finished IS NOT NULL"
                    " ORDER BY finished DESC, seq DESC LIMIT -1 OFFSET ?) RETURNING files",
                    (self.keep_count,)).fetchall()
        _remove_files((f for (files,) in rows for f in json.loads(files)), output_dir)
        return len(rows)
