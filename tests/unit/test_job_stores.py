"""The job stores' state machine, on SQLite and on a real redis-server; the
result storages on local disk and on a real S3-compatible server (moto)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from jobs.records import (
    CANCELLED, FAILED, LOST, QUEUED, RUNNING, STATES, SUCCEEDED, WAITING, Job, WorkerBeats, new_job_id, now,
    shard_inputs,
)
from jobs.redis_store import RedisJobStore
from jobs.results import LocalResults, S3Results
from jobs.sqlite_store import SqliteJobStore
from serving.errors import JobBackendVolatile
from tests.e2e.server import RedisServer, S3Server, wait_for


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteJobStore(tmp_path / "jobs.db")
    redis_server = request.getfixturevalue("redis_server")
    return RedisJobStore(redis_server.url, namespace=f"test-{new_job_id()}")


W = "host:1"  # the worker that claims


def job(total: int = 10, key: str | None = None, digest: str = "d1", shard_size: int = 0) -> Job:
    return Job(id=new_job_id(), model="sentiment", total=total, batch_size=3, shard_size=shard_size,
               parameters={"maxResults": 5}, idempotency_key=key, body_digest=digest)


def create(store, record: Job, inputs: list):
    """Record ``record`` with ``inputs`` cut into its shards (one, unless ``shard_size`` says)."""
    return store.create(record, shard_inputs(inputs, record))


def succeed(store, job_id: str, attempt: int) -> bool:
    """A one-shard job's shard completes, and its join (owned at once) finishes the job."""
    completed, join = store.complete(job_id, 0, attempt, 0)
    return completed and join is not None and store.finish(job_id, 1, join, SUCCEEDED)


def test_create_get_and_inputs_round_trip(store):
    made = create(store, job(key="k"), ["a", "b"])
    assert made.created
    got = store.get(made.job.id)
    assert got == made.job
    assert got.status == QUEUED and got.started_at is None and got.parameters == {"maxResults": 5}
    assert store.shard_inputs(made.job.id, 0) == ["a", "b"]
    assert store.get(new_job_id()) is None


def test_an_idempotency_key_gives_back_the_first_job(store):
    first = create(store, job(key="same", digest="one"), ["a"])
    second = create(store, job(key="same", digest="two"), ["b"])
    assert not second.created
    assert second.job.id == first.job.id and second.job.body_digest == "one"
    assert create(store, job(key=None), ["c"]).created and create(store, job(key=None), ["c"]).created


def test_claim_progress_and_finish_belong_to_one_attempt(store):
    job_id = create(store, job(), ["x"] * 10).job.id
    assert store.claim(job_id, 0, W) == 1
    assert store.claim(job_id, 0, W) is None  # a second message for the same job
    assert store.progress(job_id, 0, 1, 3, 3)
    assert not store.progress(job_id, 0, 2, 6, 3)  # not the owner
    assert store.heartbeat(job_id, 0, 1)
    running = store.get(job_id)
    assert (running.status, running.done, running.computed, running.attempt) == (RUNNING, 3, 3, 1)
    assert running.started_at and running.heartbeat_at
    assert store.shard_inputs(job_id, 0) == ["x"] * 10
    assert succeed(store, job_id, 1)
    assert store.shard_inputs(job_id, 0) is None  # never read again: not kept for the retention period
    assert not store.finish(job_id, 0, 1, FAILED, "x", "y")  # finished stays finished
    done = store.get(job_id)
    assert done.status == SUCCEEDED and done.finished_at >= done.started_at and done.error_code is None


def test_cancel_stops_the_owner_and_leaves_finished_jobs_alone(store):
    job_id = create(store, job(), ["x"]).job.id
    store.claim(job_id, 0, W)
    assert store.cancel(job_id).status == CANCELLED
    assert store.shard_inputs(job_id, 0) is None
    assert not store.progress(job_id, 0, 1, 1, 1)
    assert not store.heartbeat(job_id, 0, 1)
    assert store.cancel(job_id).status == CANCELLED
    other = create(store, job(), ["x"]).job.id
    store.claim(other, 0, W)
    store.finish(other, 0, 1, FAILED, "boom", "it broke")
    assert store.cancel(other).status == FAILED
    assert store.cancel(new_job_id()) is None
    queued = create(store, job(), ["x"]).job.id
    assert store.cancel(queued).status == CANCELLED
    assert store.claim(queued, 0, W) is None


def test_stale_jobs_are_requeued_then_failed_after_the_last_attempt(store):
    job_id = create(store, job(), ["x"]).job.id
    assert store.claim(job_id, 0, W) == 1
    assert store.requeue_stale(now() - 60, max_attempts=2) == ([], [])  # fresh heartbeat
    assert store.requeue_stale(now() + 1, max_attempts=2) == ([(job_id, 0)], [])
    assert store.get(job_id).status == QUEUED
    assert not store.progress(job_id, 0, 1, 1, 1)  # the lost worker, back from the dead
    assert store.claim(job_id, 0, W) == 2
    assert store.requeue_stale(now() + 1, max_attempts=2) == ([], [job_id])
    lost = store.get(job_id)
    assert lost.status == FAILED and lost.error_code == "worker_lost" and "2 time(s)" in lost.error_message


def test_discard_forgets_a_job_and_its_key(store):
    job_id = create(store, job(key="gone"), ["x"]).job.id
    store.discard(job_id)
    assert store.get(job_id) is None and store.shard_inputs(job_id, 0) is None
    assert create(store, job(key="gone"), ["y"]).created


def test_release_hands_a_job_back(store):
    job_id = create(store, job(), ["x"]).job.id
    store.claim(job_id, 0, W)
    assert store.release(job_id, 0, 1)
    assert store.get(job_id).status == QUEUED
    assert store.claim(job_id, 0, W) == 2


def test_purge_drops_finished_jobs_past_retention_and_frees_their_key(store):
    old = create(store, job(key="old"), ["x"]).job.id
    store.claim(old, 0, W)
    succeed(store, old, 1)
    running = create(store, job(), ["x"]).job.id
    store.claim(running, 0, W)
    assert store.purge(now() - 3600) == []
    assert store.purge(now() + 1) == [old]
    assert store.get(old) is None and store.shard_inputs(old, 0) is None
    assert store.get(running).status == RUNNING
    assert create(store, job(key="old"), ["y"]).created


@pytest.fixture(params=["disk", "s3"])
def results(request, tmp_path):
    if request.param == "disk":
        return LocalResults(tmp_path / "results")
    server = request.getfixturevalue("s3_server")
    for name, value in S3Server.ENV.items():
        request.getfixturevalue("monkeypatch").setenv(name, value)
    return S3Results(server.bucket, prefix=f"t-{new_job_id()}/", endpoint_url=server.url)


def test_parts_join_in_order_into_one_result(results):
    job_id = new_job_id()
    assert results.parts(job_id) == set() and not results.has_result(job_id)
    results.write_part(job_id, 2, b'{"index":4}\n')
    results.write_part(job_id, 0, b'{"index":0}\n{"index":1}\n')
    results.write_part(job_id, 1, b'{"index":2}\n{"index":3}\n')
    results.write_part(job_id, 1, b'{"index":2}\n{"index":3}\n')  # a retried batch overwrites
    assert results.parts(job_id) == {0, 1, 2}
    results.finalize(job_id, 3)
    assert results.parts(job_id) == set() and results.has_result(job_id)
    if isinstance(results, LocalResults):
        body = results.path(job_id).read_bytes()
        assert not [p for p in results.folder(job_id).iterdir() if p.name.startswith(".tmp-")]
    else:
        import requests

        body = requests.get(results.url(job_id), timeout=30).content
    assert body == b"".join(b'{"index":%d}\n' % i for i in range(5))
    results.delete(job_id)
    assert not results.has_result(job_id)


def test_the_sweep_requeues_lost_jobs_and_purges_expired_ones(tmp_path):
    from jobs.backends import build_backends
    from jobs.maintenance import Maintenance
    from serving.settings import Settings

    settings = Settings(_env_file=None, jobs_dir=tmp_path / "jobs", job_visibility_timeout_s=1,
                        job_retention_s=1, job_max_attempts=2)
    backends = build_backends(settings)
    store, results = backends.store, backends.results
    lost = create(store, job(), ["x"]).job.id
    store.claim(lost, 0, W)
    expired = create(store, job(), ["x"]).job.id
    store.claim(expired, 0, W)
    results.write_part(expired, 0, b'{"index":0}\n')
    results.finalize(expired, 1)
    succeed(store, expired, 1)
    kept = create(store, job(), ["x"]).job.id
    store.claim(kept, 0, W)
    # Backdate: the lost job's heartbeat and the expired job's finish are 5 s old.
    store._conn.execute("update job_shards set heartbeat_at = heartbeat_at - 5 where job_id = ?", (lost,))
    store._conn.execute("update jobs set finished_at = finished_at - 5 where id = ?", (expired,))

    requeued, failed, purged, lost_deleted = Maintenance(settings, backends).sweep()
    assert (requeued, failed, purged, lost_deleted) == ([(lost, 0)], [], [expired], [])
    assert store.get(lost).status == QUEUED and store.get(kept).status == RUNNING
    assert store.get(expired) is None and not results.has_result(expired)
    # The lost job is back on huey's SQLite queue, for any worker to take.
    assert backends.queue.huey.pending_count() == 1
    assert backends.queue.huey.pending()[0].args == (lost, 0)


def test_counts_by_status_follow_every_transition(store):
    """The counts equal the statuses of the records, after each kind of change
    (the Redis store keeps counters in its scripts, SQLite counts rows)."""
    made = [create(store, job(key=f"k{i}" if i % 2 else None), ["x"]).job.id for i in range(8)]
    create(store, job(key="k1"), ["again"])  # an idempotent replay makes no job

    def expected() -> dict[str, int]:
        statuses = Counter(record.status for record in map(store.get, made) if record is not None)
        return {**dict.fromkeys(STATES, 0), **statuses}

    def counted() -> dict[str, int]:
        counts = store.counts()
        assert set(counts) == set(STATES) | {LOST}
        return {state: counts[state] for state in STATES}

    assert counted() == expected() == {**dict.fromkeys(STATES, 0), QUEUED: 8}
    for job_id in made[:6]:
        store.claim(job_id, 0, W)
    store.claim(made[0], 0, W)  # not queued any more: no change
    assert counted() == expected()
    succeed(store, made[0], 1)
    store.finish(made[1], 0, 1, FAILED, "boom", "it broke")
    succeed(store, made[1], 1)  # finished stays finished
    store.cancel(made[2])  # running -> cancelled
    store.cancel(made[6])  # queued -> cancelled
    store.cancel(made[0])  # succeeded: unchanged
    store.release(made[3], 0, 1)
    assert counted() == expected()
    store.requeue_stale(now() + 1, max_attempts=1)  # made[4], made[5]: failed (1 attempt used)
    assert counted() == expected()
    store.claim(made[3], 0, W)
    store.requeue_stale(now() + 1, max_attempts=5)  # made[3]: queued again
    store.discard(made[7])
    store.discard(new_job_id())  # unknown: no change
    assert counted() == expected()
    store.purge(now() + 1)
    assert counted() == expected()
    assert counted() == {**dict.fromkeys(STATES, 0), QUEUED: 1}  # made[3]: every finished job was purged
    assert store.counts()[LOST] == 0
    store.set_lost(3)
    assert store.counts()[LOST] == 3


def test_known_tells_which_ids_have_a_record(store):
    kept = create(store, job(), ["x"]).job.id
    gone = create(store, job(), ["x"]).job.id
    store.discard(gone)
    assert store.known([kept, gone, new_job_id()]) == {kept}
    assert store.known([]) == set()


def test_worker_heartbeats_are_counted_by_age_and_a_stop_is_the_last_one(store):
    assert store.workers(now() - 60) == WorkerBeats(alive=0, last=None)
    before = now()
    store.beat("host:1:a")
    store.beat("host:2:b")
    store.beat("host:2:b")  # a second beat of the same worker is still one worker
    seen = store.workers(before - 1)
    assert seen.alive == 2 and before <= seen.last <= now()
    assert store.workers(now() + 1) == WorkerBeats(alive=0, last=seen.last)  # too old to be alive, still seen
    store.leave("host:1:a")
    assert store.workers(before - 1).alive == 1
    store.leave("host:2:b")
    stopped = store.workers(before - 1)
    assert stopped.alive == 0 and seen.last <= stopped.last <= now()  # the stop counts as the last sign of life
    store.beat("host:1:a")  # the same worker back
    assert store.workers(before - 1).alive == 1


def test_a_redis_without_persistence_is_refused_unless_allowed(tmp_path, redis_server, caplog, monkeypatch):
    from jobs import redis_store

    RedisJobStore(redis_server.url).check_durable()  # AOF on: accepted
    with RedisServer(tmp_path, volatile=True) as volatile:
        with pytest.raises(JobBackendVolatile) as refused:
            RedisJobStore(volatile.url).check_durable()
        message = refused.value.message
        assert f"127.0.0.1:{volatile.port}/0" in message and "appendonly yes" in message
        assert "SERVE_JOBS_ALLOW_VOLATILE=true" in message and "\n" not in message
        with caplog.at_level("WARNING", logger="jobs.redis_store"):
            RedisJobStore(volatile.url, allow_volatile=True).check_durable()
        assert "accepted because SERVE_JOBS_ALLOW_VOLATILE=true" in caplog.text
        # A refusal is asked again (here at once): a server given AOF since is accepted.
        monkeypatch.setattr(redis_store, "RECHECK_REFUSAL_S", 0.0)
        store = RedisJobStore(volatile.url)
        with pytest.raises(JobBackendVolatile):
            store.check_durable()
        store.redis.config_set("appendonly", "yes")
        store.check_durable()
        # Redis refuses a SIGTERM while it writes its first AOF: let it finish.
        wait_for(lambda: not store.redis.info("persistence")["aof_rewrite_in_progress"], 30, "the first AOF")
    caplog.clear()
    with RedisServer(tmp_path, volatile=True, extra=["--rename-command", "CONFIG", ""]) as managed:
        with caplog.at_level("WARNING", logger="jobs.redis_store"):
            RedisJobStore(managed.url).check_durable()  # cannot tell: trusted, with a warning
        assert f"cannot ask Redis at 127.0.0.1:{managed.port}/0" in caplog.text


def test_a_job_trace_is_its_marker_or_whatever_is_stored(results):
    job_id = new_job_id()
    assert results.trace(job_id) is None and job_id not in dict(results.jobs())
    results.write_marker(job_id, {"id": job_id, "model": "sentiment", "total": 3})
    assert results.trace(job_id) == {"id": job_id, "model": "sentiment", "total": 3}
    older = new_job_id()
    results.write_part(older, 0, b'{"index":0}\n')  # a job with parts and no marker
    assert results.trace(older) == {}
    written = dict(results.jobs())
    assert {job_id, older} <= set(written) and all(now() - 60 < t <= now() + 1 for t in written.values())
    results.write_part(job_id, 0, b'{"index":0}\n')
    results.finalize(job_id, 1)
    assert results.trace(job_id)["model"] == "sentiment"  # the marker stays beside the result
    results.delete(job_id)
    results.delete(older)
    assert results.trace(job_id) is None and results.trace(older) is None
    assert not {job_id, older} & set(dict(results.jobs()))


def test_the_sweep_deletes_what_is_left_of_lost_jobs_once_old_enough(tmp_path):
    import os

    from jobs.backends import build_backends
    from jobs.maintenance import Maintenance
    from serving.settings import Settings

    settings = Settings(_env_file=None, jobs_dir=tmp_path / "jobs", job_orphan_age_s=60)
    backends = build_backends(settings)
    store, results = backends.store, backends.results
    kept, fresh, old = (create(store, job(), ["x"]).job.id for _ in range(3))
    for job_id in (kept, fresh, old):
        results.write_marker(job_id, {"id": job_id})
        results.write_part(job_id, 0, b'{"index":0}\n')
    store.discard(fresh)  # the backend lost two records
    store.discard(old)
    # Backdate: nothing was written to the old one for two minutes.
    two_minutes_ago = now() - 120
    for path in (results.folder(old), results.folder(old) / "parts"):
        os.utime(path, (two_minutes_ago, two_minutes_ago))

    outcome = Maintenance(settings, backends).sweep()
    assert outcome.lost == [old]
    assert results.trace(old) is None
    assert results.trace(fresh) == {"id": fresh} and results.parts(fresh) == {0}
    assert results.parts(kept) == {0}
    assert store.counts()[LOST] == 1  # fresh: lost, kept until it is old enough


def test_a_worker_beats_from_a_thread_while_its_models_load_and_stops_cleanly(store):
    from jobs.presence import Presence

    presence = Presence(store, interval=0.05)
    with presence.beating():  # the block stands for the models' loading
        first = wait_for(lambda: store.workers(now() - 60).last, 10, "a first heartbeat")
        wait_for(lambda: store.workers(now() - 60).last > first, 10, "a second heartbeat from the thread")
        assert store.workers(now() - 60).alive == 1
    assert not [t for t in threading.enumerate() if t.name == "job-worker-heartbeat"]  # joined before any fork
    presence.beat()  # then the consumer's main loop beats
    assert store.workers(now() - 60).alive == 1
    presence.leave()
    assert store.workers(now() - 60).alive == 0


def test_jobs_are_numbered_in_order_and_found_by_number(store):
    first = create(store, job(), ["a"]).job
    second = create(store, job(), ["b"]).job
    replay_key = create(store, job(key="again"), ["c"]).job
    assert create(store, job(key="again"), ["c"]).job.number == replay_key.number  # a replay is not a new number
    assert first.number >= 1 and second.number == first.number + 1 and replay_key.number == second.number + 1
    assert store.get(second.id).number == second.number
    assert store.by_number(second.number) == second.id
    assert store.by_number(replay_key.number + 1) is None and store.by_number(0) is None
    store.discard(second.id)
    assert store.by_number(second.number) is None
    assert create(store, job(), ["d"]).job.number == replay_key.number + 1  # never reused


def test_steps_and_summary_are_saved_with_the_record(store):
    made = Job(id=new_job_id(), model="tiny-diffusion", total=2, batch_size=1, steps_total=40,
               summary={"prompt": "a sunset", "negative_prompt": None, "num_steps": 20})
    create(store, made, [{"prompt": "a sunset"}, {"prompt": "a sunrise"}])
    assert store.get(made.id).summary == made.summary and store.get(made.id).steps_done == 0
    attempt = store.claim(made.id, 0, W)
    assert store.progress(made.id, 0, attempt, 0, 0, 7)
    assert (store.get(made.id).steps_done, store.get(made.id).done) == (7, 0)
    assert store.progress(made.id, 0, attempt, 1, 1, 20)
    store.cancel(made.id)
    assert not store.progress(made.id, 0, attempt, 1, 0, 25)  # cancelled: the steps stop counting
    assert store.get(made.id).steps_done == 20 and store.get(made.id).summary == made.summary
    plain = create(store, job(), ["a"]).job
    assert store.get(plain.id).summary is None and store.get(plain.id).steps_total == 0


def test_a_jobs_db_of_an_earlier_release_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.db"
    old = sqlite3.connect(path)
    old.executescript(
        "create table jobs (id text primary key, model text not null, total integer not null,"
        " batch_size integer not null, parameters text not null, status text not null,"
        " done integer not null default 0, computed integer not null default 0, attempt integer not null default 0,"
        " created_at real not null, started_at real, finished_at real, heartbeat_at real, error_code text,"
        " error_message text, idempotency_key text unique, body_digest text not null default '');"
        "insert into jobs (id, model, total, batch_size, parameters, status, created_at)"
        " values ('" + "a" * 32 + "', 'sentiment', 3, 2, '{}', 'succeeded', 1.0);"
    )
    old.commit()
    old.close()
    store = SqliteJobStore(path)
    earlier = store.get("a" * 32)
    assert earlier.status == SUCCEEDED and earlier.number == 0 and earlier.summary is None
    fresh = create(store, job(), ["x"]).job
    assert fresh.number == 1 and store.by_number(1) == fresh.id


def test_a_jobs_files_are_kept_with_its_results_and_deleted_with_them(results):
    job_id = new_job_id()
    assert not results.has_file(job_id, "00000000.png")
    results.write_file(job_id, "00000000.png", b"\x89PNG fake")
    results.write_part(job_id, 0, b'{"index":0,"file":"00000000.png"}\n')
    results.finalize(job_id, 1)
    assert results.has_file(job_id, "00000000.png") and not results.has_file(job_id, "00000001.png")
    if isinstance(results, LocalResults):
        assert results.file_path(job_id, "00000000.png").read_bytes() == b"\x89PNG fake"
    else:
        import requests

        got = requests.get(results.file_url(job_id, "00000000.png"), timeout=30)
        assert got.content == b"\x89PNG fake" and got.headers["Content-Type"] == "image/png"
    results.delete(job_id)
    assert not results.has_file(job_id, "00000000.png")


def test_active_jobs_by_model_follow_every_transition(store):
    def made(model: str, total: int, created_at: float) -> str:
        record = job(total=total)
        record.model, record.created_at = model, created_at
        return create(store, record, ["x"] * total).job.id

    t = now()
    a1, a2, a3 = made("a", 4, t - 30), made("a", 6, t - 10), made("a", 1, t - 5)
    b1 = made("b", 2, t - 20)
    found = store.active()
    assert set(found) == {"a", "b"}
    assert (found["a"].queued, found["a"].running, found["a"].queued_inputs) == (3, 0, 11)
    assert found["a"].oldest_queued_at == pytest.approx(t - 30)
    assert (found["b"].queued, found["b"].queued_inputs) == (1, 2)

    assert store.claim(a1, 0, W) == 1  # the oldest leaves the queue: the next one is oldest
    store.cancel(a3)
    found = store.active()["a"]
    assert (found.queued, found.running, found.queued_inputs) == (1, 1, 6)
    assert found.oldest_queued_at == pytest.approx(t - 10)

    assert store.release(a1, 0, 1)  # handed back: queued again, by its creation time
    assert store.active()["a"].oldest_queued_at == pytest.approx(t - 30)
    assert store.claim(a1, 0, W) == 2
    assert store.requeue_stale(now() + 1, max_attempts=5) == ([(a1, 0)], [])
    assert store.active()["a"].queued == 2
    assert store.claim(a1, 0, W) == 3 and succeed(store, a1, 3)
    assert store.claim(a2, 0, W) == 1 and store.finish(a2, 0, 1, FAILED, "x", "y")
    store.discard(b1)
    assert store.active() == {}  # finished, cancelled and discarded jobs are not active


def test_a_jobs_trace_context_round_trips(store):
    record = job()
    record.trace_context = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01", "tracestate": "vendor=x"}
    made = create(store, record, ["a"])
    assert store.get(made.job.id).trace_context == record.trace_context
    assert store.get(create(store, job(), ["b"]).job.id).trace_context is None


def test_shards_are_claimed_apart_and_the_last_one_starts_the_join(store):
    record = job(total=7, shard_size=3)  # shards [0, 3) [3, 6) [6, 7), then the join
    job_id = create(store, record, list("abcdefg")).job.id
    assert [(s.index, s.status) for s in store.shards(job_id)] == [(0, QUEUED), (1, QUEUED), (2, QUEUED), (3, WAITING)]
    assert [store.shard_inputs(job_id, i) for i in range(3)] == [list("abc"), list("def"), ["g"]]
    assert store.claim(job_id, 3, W) is None  # the join waits for the data shards
    assert store.claim(job_id, 1, "host:2") == 1 and store.get(job_id).status == RUNNING
    assert store.claim(job_id, 0, "host:3") == 1
    assert store.progress(job_id, 1, 1, 2, 2) and store.progress(job_id, 0, 1, 1, 1)
    assert store.progress(job_id, 1, 1, 2, 0)  # saved again: the job's figures move by the difference
    running = store.get(job_id)
    assert (running.done, running.computed, running.shards_done) == (3, 3, 0)
    assert store.complete(job_id, 1, 1, 1) == (True, None)
    assert store.shard_inputs(job_id, 1) is None  # a done shard's inputs are never read again
    assert store.complete(job_id, 1, 1, 0) == (False, None)  # done stays done
    assert store.complete(job_id, 0, 1, 2) == (True, None)
    assert store.claim(job_id, 2, "host:2") == 1
    completed, join = store.complete(job_id, 2, 1, 1)
    assert completed and join == 1
    state = store.get(job_id)
    assert (state.status, state.done, state.computed, state.shards_done) == (RUNNING, 7, 7, 3)
    shards = store.shards(job_id)
    assert [s.worker for s in shards] == ["host:3", "host:2", "host:2", "host:2"]  # the join: the last one's
    assert [s.status for s in shards] == [SUCCEEDED] * 3 + [RUNNING]
    assert store.finish(job_id, 3, join, SUCCEEDED)
    assert store.get(job_id).status == SUCCEEDED and store.shards(job_id)[3].status == SUCCEEDED


def test_a_failed_or_cancelled_job_stops_every_shard(store):
    failed = create(store, job(total=6, shard_size=2), list("abcdef")).job.id
    assert store.claim(failed, 0, W) == 1 and store.claim(failed, 1, W) == 1
    assert store.finish(failed, 1, 1, FAILED, "internal_error", "the worker failed: ValueError")
    assert not store.progress(failed, 0, 1, 1, 1)  # the other shard's next save fails: it stops
    assert store.claim(failed, 2, W) is None  # and a queued one is never taken
    assert [s.status for s in store.shards(failed)] == [CANCELLED, FAILED, CANCELLED, CANCELLED]
    assert store.get(failed).error_code == "internal_error"
    cancelled = create(store, job(total=6, shard_size=2), list("abcdef")).job.id
    assert store.claim(cancelled, 2, W) == 1
    assert store.cancel(cancelled).status == CANCELLED
    assert not store.heartbeat(cancelled, 2, 1) and store.claim(cancelled, 0, W) is None
    assert store.shard_inputs(cancelled, 0) is None
    assert store.requeue_stale(now() + 1, max_attempts=3) == ([], [])  # nothing of them to take back


def test_a_stale_shard_is_queued_again_while_the_others_go_on(store):
    job_id = create(store, job(total=4, shard_size=2), list("abcd")).job.id
    assert store.claim(job_id, 0, W) == 1 and store.claim(job_id, 1, "host:2") == 1
    cutoff = now() + 0.5
    wait_for(lambda: now() > cutoff, 5, "the cutoff to pass")
    assert store.heartbeat(job_id, 1, 1)  # shard 1 is alive, shard 0's worker is gone
    assert store.requeue_stale(cutoff, max_attempts=2) == ([(job_id, 0)], [])
    assert store.get(job_id).status == RUNNING  # shard 1 still runs
    assert store.release(job_id, 1, 1)  # and is handed back: no shard runs, the job waits
    assert store.get(job_id).status == QUEUED
    assert store.claim(job_id, 0, W) == 2
    assert store.get(job_id).attempt == 2
    assert store.requeue_stale(now() + 1, max_attempts=2) == ([], [job_id])
    lost = store.get(job_id)
    assert lost.status == FAILED and lost.error_code == "worker_lost" and "shard 0" in lost.error_message


def test_a_skipping_job_gets_its_exhausted_shard_back_instead_of_failing(store):
    record = job(total=4, shard_size=2)
    record.on_error = "skip"
    job_id = create(store, record, list("abcd")).job.id
    assert store.claim(job_id, 0, W) == 1
    assert store.requeue_stale(now() + 1, max_attempts=1) == ([(job_id, 0)], [])
    assert store.claim(job_id, 0, W) == 2  # past its attempts: the runner writes its error lines
    assert store.get(job_id).on_error == "skip"
