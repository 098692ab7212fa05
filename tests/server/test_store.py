"""The durable job store: run order, idempotency, limits, exactly-once ends, retention, concurrency, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from athena.errors import ConfigError
from athena.server.store import (
    DB_FILENAME,
    JobStateError,
    JobStatus,
    JobStore,
    QueueFull,
    StoreError,
    UnknownJob,
)

ROOT = Path(__file__).resolve().parents[2]
# Child processes import the store without running athena/__init__.py (it imports torch: ~3 s each).
PRELUDE = f"""
import sys, time, types
pkg = types.ModuleType("athena"); pkg.__path__ = [{str(ROOT / "athena")!r}]; sys.modules["athena"] = pkg
from pathlib import Path
from athena.server.store import JobStatus, JobStore
"""
PROMPT = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore(tmp_path / DB_FILENAME) as s:
        yield s


def child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", PRELUDE + script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


# ---------------------------------------------------------------- order, position, counts


def test_run_order_is_priority_then_fifo_and_front_goes_first_within_its_priority(store: JobStore) -> None:
    ids = {}
    for name, kw in [("a", {}), ("b", {}), ("c", {"priority": 5}), ("d", {"front": True}), ("e", {"front": True})]:
        ids[name] = store.submit(PROMPT, **kw)[0].id  # type: ignore[arg-type]
    assert [store.get(ids[n]).number for n in "abcde"] == [1, 2, 3, -4, -5]  # type: ignore[union-attr]
    expected = ["c", "e", "d", "a", "b"]  # priority first; the latest front job runs first (ComfyUI's -number)
    assert [store.position(ids[n]) for n in expected] == [0, 1, 2, 3, 4]
    assert [j.id for j in store.queued()] == [ids[n] for n in expected]
    claimed = [store.claim("w") for _ in expected]
    assert [j.id for j in claimed if j] == [ids[n] for n in expected]
    assert store.claim("w") is None
    assert all(j and j.status == JobStatus.RUNNING and j.attempts == 1 and j.worker == "w" for j in claimed)
    assert store.position(ids["a"]) is None and store.position("missing") is None


def test_counts_and_numbers_never_reused(store: JobStore, tmp_path: Path) -> None:
    c = [store.submit(PROMPT)[0] for _ in range(3)][-1]
    store.claim("w")
    store.cancel(c.id)
    assert store.counts() == {JobStatus.QUEUED: 1, JobStatus.RUNNING: 1, JobStatus.SUCCEEDED: 0,
                              JobStatus.FAILED: 0, JobStatus.CANCELLED: 1}
    assert store.delete(c.id, tmp_path)
    assert store.submit(PROMPT)[0].number == 4  # the counter survives deletes


def test_submit_validates_and_keeps_given_ids(store: JobStore) -> None:
    job, created = store.submit(PROMPT, extra={"extra_pnginfo": {"workflow": {}}}, client_id="c1", job_id="p-1")
    assert created and job.id == "p-1" and job.client_id == "c1"
    assert store.get("p-1") == job and job.prompt == PROMPT and job.extra == {"extra_pnginfo": {"workflow": {}}}
    with pytest.raises(ConfigError, match="already exists"):
        store.submit(PROMPT, job_id="p-1")
    with pytest.raises(ConfigError, match="JSON object"):
        store.submit([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------- idempotency and limits


def test_idempotency_key_returns_the_same_job_per_client(store: JobStore) -> None:
    first, created = store.submit(PROMPT, client_id="alice", idempotency_key="k")
    again, created_again = store.submit({"other": {}}, client_id="alice", idempotency_key="k")
    assert created and not created_again and again == first
    other, created_other = store.submit(PROMPT, client_id="bob", idempotency_key="k")
    assert created_other and other.id != first.id
    anon, _ = store.submit(PROMPT, idempotency_key="k")
    assert store.submit(PROMPT, idempotency_key="k") == (anon, False)  # no client is a client of its own
    store.claim("w")
    store.finish(first.id, JobStatus.SUCCEEDED)
    assert store.submit(PROMPT, client_id="alice", idempotency_key="k")[0].status == JobStatus.SUCCEEDED
    assert store.counts()[JobStatus.QUEUED] + store.counts()[JobStatus.SUCCEEDED] == 3


def test_queue_full_with_retry_after(tmp_path: Path) -> None:
    clock = Clock()
    with JobStore(tmp_path / DB_FILENAME, max_queued=2, clock=clock) as store:
        a, _ = store.submit(PROMPT, idempotency_key="a")
        store.submit(PROMPT)
        with pytest.raises(QueueFull, match="max_queued=2") as full:
            store.submit(PROMPT)
        assert full.value.retry_after == 5.0  # no history to estimate from
        assert store.submit(PROMPT, idempotency_key="a") == (a, False)  # a retried submit still gets its job
        job = store.claim("w")
        assert job is not None
        clock.now += 30.0
        store.finish(job.id, JobStatus.SUCCEEDED)
        store.submit(PROMPT)  # room again
        with pytest.raises(QueueFull) as full:
            store.submit(PROMPT)
        assert full.value.retry_after == 30.0  # the mean run time of recent jobs
        assert store.counts()[JobStatus.QUEUED] == 2


# ---------------------------------------------------------------- state changes


def test_cancel_only_queued(store: JobStore) -> None:
    running, queued = store.submit(PROMPT)[0], store.submit(PROMPT)[0]
    store.claim("w")
    assert not store.cancel(running.id) and not store.cancel("missing")
    assert store.cancel(queued.id) and not store.cancel(queued.id)
    job = store.get(queued.id)
    assert job is not None and job.status == JobStatus.CANCELLED and job.finished is not None
    assert store.claim("w") is None


def test_finish_happens_exactly_once(store: JobStore) -> None:
    job = store.submit(PROMPT)[0]
    with pytest.raises(JobStateError, match="queued, not running"):
        store.finish(job.id, JobStatus.SUCCEEDED)
    store.claim("w")
    outputs = {"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}}
    done = store.finish(job.id, JobStatus.SUCCEEDED, outputs=outputs, files=["a.png"])
    assert done.status == JobStatus.SUCCEEDED and done.outputs == outputs and done.files == ["a.png"]
    assert done.finished is not None and done.error is None
    with pytest.raises(JobStateError, match="succeeded, not running; a job finishes exactly once"):
        store.finish(job.id, JobStatus.FAILED, error={"message": "late"})
    assert store.get(job.id) == done  # the second finish changed nothing
    with pytest.raises(UnknownJob):
        store.finish("missing", JobStatus.FAILED)
    with pytest.raises(ConfigError, match="finishes as one of"):
        store.finish(job.id, JobStatus.QUEUED)


def test_failed_job_keeps_its_error(store: JobStore) -> None:
    job = store.submit(PROMPT)[0]
    store.claim("w")
    error = {"node_id": "3", "node_type": "KSampler", "message": "boom", "exception_type": "RuntimeError",
             "traceback": ["line 1"]}
    assert store.finish(job.id, JobStatus.FAILED, error=error).error == error


def test_list_filters_and_pages(store: JobStore) -> None:
    jobs = [store.submit(PROMPT, client_id="a" if i % 2 else "b")[0] for i in range(6)]
    store.claim("w")
    store.finish(jobs[0].id, JobStatus.SUCCEEDED)
    store.cancel(jobs[1].id)
    assert [j.id for j in store.list()] == [j.id for j in reversed(jobs)]
    assert [j.id for j in store.list(newest_first=False, limit=2, offset=1)] == [jobs[1].id, jobs[2].id]
    assert [j.id for j in store.list(client_id="a")] == [jobs[5].id, jobs[3].id, jobs[1].id]
    assert [j.id for j in store.list(status=[JobStatus.SUCCEEDED, JobStatus.CANCELLED])] == [jobs[1].id, jobs[0].id]
    assert [j.id for j in store.list(status=[JobStatus.QUEUED], client_id="b")] == [jobs[4].id, jobs[2].id]
    assert store.list(status=[]) == [] and len(store.list(limit=None)) == 6


# ---------------------------------------------------------------- deletion and retention


def finished_job(store: JobStore, files: list[str], status: JobStatus = JobStatus.SUCCEEDED) -> str:
    job_id = store.submit(PROMPT)[0].id
    assert store.claim("w") is not None
    store.finish(job_id, status, files=files)
    return job_id


def test_delete_and_clear(store: JobStore, tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x.png").write_bytes(b"x")
    done = finished_job(store, ["sub/x.png", "gone.png"])  # a file already gone is fine
    running = store.submit(PROMPT)[0].id
    assert store.claim("w") is not None
    queued = [store.submit(PROMPT)[0].id for _ in range(3)]
    assert store.delete(done, out) and not (out / "sub" / "x.png").exists() and store.get(done) is None
    assert not store.delete(done, out) and not store.delete(running, out)
    assert store.delete(queued[0], out)
    with pytest.raises(ConfigError, match="running"):
        store.clear([JobStatus.RUNNING])
    assert store.clear([JobStatus.QUEUED]) == 2
    assert [j.id for j in store.list()] == [running]


def test_prune_by_count_and_age_deletes_files_but_never_outside_the_output_dir(tmp_path: Path) -> None:
    out, outside = tmp_path / "output", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    secret = outside / "secret.png"
    secret.write_bytes(b"keep me")
    (out / "link").symlink_to(outside, target_is_directory=True)
    (out / "evil.png").symlink_to(secret)
    escapes = ["../outside/secret.png", str(secret), "link/secret.png", "evil.png", ".", ""]
    clock = Clock()
    with JobStore(tmp_path / DB_FILENAME, keep_count=2, keep_seconds=100.0, clock=clock) as store:
        old = finished_job(store, ["old.png", *escapes])
        clock.now += 10
        ids = [finished_job(store, [f"{i}.png"], JobStatus.FAILED if i == 1 else JobStatus.SUCCEEDED)
               for i in range(3)]
        waiting = store.submit(PROMPT)[0].id
        for name in ["old.png", "0.png", "1.png", "2.png"]:
            (out / name).write_bytes(b"png")
        assert store.prune(out) == 2  # by count: the two oldest finished jobs
        assert [j.id for j in store.list()] == [waiting, ids[2], ids[1]]
        assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "evil.png", "link"]
        assert secret.read_bytes() == b"keep me" and (out / "evil.png").is_symlink() and out.is_dir()
        clock.now += 95  # ids[1] and ids[2] are now 95 s old; the queued job is never pruned
        assert store.prune(out) == 0
        clock.now += 10
        assert store.prune(out) == 2 and [j.id for j in store.list()] == [waiting]
        assert sorted(p.name for p in out.iterdir()) == ["evil.png", "link"]
        assert old not in {j.id for j in store.list()}


# ---------------------------------------------------------------- the file


def test_file_is_wal_versioned_and_refuses_strangers(tmp_path: Path) -> None:
    path = tmp_path / "data" / DB_FILENAME  # the data directory is created
    with JobStore(path) as store:
        job = store.submit(PROMPT)[0]
    with JobStore(path) as store:
        assert store.get(job.id) == job
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    with pytest.raises(StoreError, match="schema 7, but this Athena reads up to 1.*newer Athena"):
        JobStore(path)
    other = tmp_path / "other.sqlite3"
    raw = sqlite3.connect(other)
    raw.execute("CREATE TABLE photos (x)")
    raw.close()
    with pytest.raises(StoreError, match="not an Athena job store"):
        JobStore(other)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite job store"):
        JobStore(junk)
    store = JobStore(path.with_name("fresh.sqlite3"))
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("x")


# ---------------------------------------------------------------- concurrency


def test_threads_never_claim_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    shared = JobStore(path)
    submitted = {shared.submit(PROMPT)[0].id for _ in range(200)}
    # Two threads share one store (its lock), two more have their own connections (SQLite's locks).
    stores = [shared, shared, JobStore(path), JobStore(path)]
    claimed: list[list[str]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def claimer(i: int) -> None:
        start.wait()
        while (job := stores[i].claim(f"t{i}")) is not None:
            claimed[i].append(job.id)
            stores[i].finish(job.id, JobStatus.SUCCEEDED)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [j for c in claimed for j in c]
    assert len(everything) == len(set(everything)) == 200 and set(everything) == submitted
    assert shared.counts()[JobStatus.SUCCEEDED] == 200
    for s in stores[1:]:
        s.close()


CLAIMER = """
import threading
print("ready", flush=True)
sys.stdin.readline()
def claim(tag):
    store = JobStore(PATH)
    while (job := store.claim(tag)) is not None:
        print(tag, job.id, flush=True)
        time.sleep(0.001)  # a little work, so the claimers interleave
    store.close()
threads = [threading.Thread(target=claim, args=(f"{TAG}.{i}",)) for i in range(2)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_processes_never_claim_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    with JobStore(path) as store:
        submitted = {store.submit(PROMPT)[0].id for _ in range(200)}
    procs = [child(f"PATH = {str(path)!r}\nTAG = 'p{i}'\n" + CLAIMER) for i in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:  # both start claiming at once
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    lines = [line.split() for p in procs for line in p.communicate(timeout=60)[0].splitlines()]
    assert all(p.returncode == 0 for p in procs)
    ids = [job_id for _, job_id in lines]
    assert len(ids) == len(set(ids)) == 200 and set(ids) == submitted
    assert {tag.split(".")[0] for tag, _ in lines} == {"p0", "p1"}  # both processes took part
    with JobStore(path) as store:
        assert store.counts()[JobStatus.RUNNING] == 200


# ---------------------------------------------------------------- crash durability


CRASHER = """
store = JobStore(PATH)
for i in range(5):
    print("submitted", store.submit({"n": {"round": ROUND, "i": i}})[0].id, flush=True)
job = store.claim("doomed")
print("claimed", job.id, flush=True)
while True:  # keep committing until killed: every acknowledged submit must survive
    print("submitted", store.submit({"n": {"round": ROUND, "tail": True}})[0].id, flush=True)
"""


def test_kill_9_loses_nothing_and_a_job_that_crashes_twice_fails(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    acknowledged: list[str] = []
    claimed: list[str] = []
    for round_ in range(3):
        proc = child(f"PATH = Path({str(path)!r})\nROUND = {round_}\n" + CRASHER)
        assert proc.stdout is not None
        tail, has_claimed = 0, False
        while tail < 20:  # kill -9 mid-stream, after the claim and 20 more commits
            kind, job_id = proc.stdout.readline().split()
            if kind == "claimed":
                claimed.append(job_id)
                has_claimed = True
            else:
                acknowledged.append(job_id)
                tail += has_claimed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        assert proc.stdin is not None
        proc.stdin.close()

        with JobStore(path, max_queued=10_000) as store:
            jobs = store.list(limit=None, newest_first=False)
            ids = [j.id for j in jobs]
            assert len(ids) == len(set(ids)) and set(acknowledged) <= set(ids)
            assert len(ids) - len(acknowledged) <= 1  # at most the submit that committed but was not printed
            assert len({j.number for j in jobs}) == len(jobs)
            running = [j for j in jobs if j.status == JobStatus.RUNNING]
            assert [j.id for j in running] == [claimed[-1]] and running[0].worker == "doomed"
            changed = store.recover()
            assert [j.id for j in changed] == [claimed[-1]]
            assert store.recover() == []  # nothing left running
            acknowledged = ids  # committed jobs count as acknowledged for the next round

    first, second = claimed[0], claimed[2]
    assert claimed[1] == first  # the recovered job was next in line, so the restart ran it again
    with JobStore(path) as store:
        crashed_twice = store.get(first)
        assert crashed_twice is not None and crashed_twice.status == JobStatus.FAILED
        assert crashed_twice.attempts == 2 and crashed_twice.error is not None
        assert crashed_twice.error["message"] == "the server stopped twice while running this job; not retried again"
        requeued = store.get(second)
        assert requeued is not None and requeued.status == JobStatus.QUEUED and requeued.attempts == 1
        assert requeued.started is None and requeued.worker is None and store.position(second) == 0
        counts = store.counts()
        assert counts[JobStatus.FAILED] == 1 and counts[JobStatus.RUNNING] == 0
        assert counts[JobStatus.QUEUED] == len(acknowledged) - 1
