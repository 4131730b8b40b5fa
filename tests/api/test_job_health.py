"""The job subsystem's health through the Flask test client: /readyz's ``jobs``,
the job figures of /metrics, the 503 when no job worker is alive, and 410 for a
job whose record the backend lost. A worker's heartbeat is written into the
real job store (SQLite here) as a worker writes it; tests/e2e/test_job_health.py
runs the same with a real Gunicorn, job worker and redis-server."""

from __future__ import annotations

import io

from prometheus_client.parser import text_string_to_metric_families

from api.jobs import JOBS_EXTENSION
from jobs.maintenance import Maintenance
from jobs.records import LOST, STATES
from serve_http import create_app
from tests.api.test_jobs import TEXTS, run_queued
from tests.e2e.server import free_port, wait_for


WORKER_SIDE = ("serve_http_job_inputs", "serve_http_job_batch_duration", "serve_http_job_attempts")


def job_samples(client) -> dict[tuple[str, tuple], float]:
    """The ``serve_http_job*`` samples of /metrics that the job store gives, by
    (name, labels); not the job processes' own counters (their exporter's, here
    in this process because the tests run jobs inline)."""
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("serve_http_job") and not s.name.startswith(WORKER_SIDE)
    }


def submit(client, inputs=TEXTS):
    return client.post("/v1/jobs", json={"model": "sentiment", "inputs": inputs})


def test_readyz_says_degraded_without_a_worker_and_ok_with_one(client, app):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json()["status"] == "ready"
    jobs = r.get_json()["jobs"]
    assert jobs["status"] == "degraded" and jobs["backend"] == "sqlite+disk"
    assert jobs["backend_reachable"] is True and jobs["workers_alive"] == 0
    assert jobs["last_heartbeat_age_s"] is None and jobs["queue_depth"] == 0
    assert jobs["accepting_jobs"] is True  # within the grace from the start
    assert "make worker" in jobs["reason"]

    assert submit(client).status_code == 202
    service = app.extensions[JOBS_EXTENSION]
    service.store.beat("test-host:1:abc")
    jobs = client.get("/readyz").get_json()["jobs"]
    assert jobs["status"] == "ok" and jobs["workers_alive"] == 1 and "reason" not in jobs
    assert 0 <= jobs["last_heartbeat_age_s"] < 5
    assert jobs["queue_depth"] == service.backends.queue.huey.pending_count() == 1


def test_a_job_is_refused_once_no_worker_was_seen_for_the_grace(settings, registry):
    settings.job_worker_grace_s = 0.2
    app = create_app(settings, registry=registry)
    client = app.test_client()
    service = app.extensions[JOBS_EXTENSION]
    wait_for(lambda: not client.get("/readyz").get_json()["jobs"]["accepting_jobs"], 10, "the grace to pass")
    made = sum(service.store.counts()[state] for state in STATES)

    r = submit(client)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    error = r.get_json()["error"]
    assert error["code"] == "no_job_worker"
    assert "since this server started" in error["message"] and "SERVE_JOB_WORKER_GRACE_S=0.2" in error["message"]
    assert "`make worker`" in error["message"] and "`python -m jobs.worker`" in error["message"]
    upload = client.post("/v1/jobs/upload", content_type="multipart/form-data",
                         data={"model": "sentiment", "inputs": (io.BytesIO(b'"a fine film"\n'), "in.jsonl")})
    assert upload.status_code == 503 and upload.get_json()["error"]["code"] == "no_job_worker"
    # Nothing was made: no record, nothing in the queue, no folder in result storage.
    assert sum(service.store.counts()[state] for state in STATES) == made
    assert service.backends.queue.depth() == 0 and list(service.backends.results.jobs()) == []
    readyz = client.get("/readyz")
    assert readyz.status_code == 200 and readyz.get_json()["jobs"]["status"] == "degraded"
    assert readyz.get_json()["jobs"]["reason"] == error["message"].removesuffix("; no job was created")

    service.store.beat("test-host:2:def")  # a worker appears
    assert submit(client).status_code == 202
    service.store.leave("test-host:2:def")  # and stops on purpose: refused again once the grace passed
    wait_for(lambda: not client.get("/readyz").get_json()["jobs"]["accepting_jobs"], 10, "the grace to pass")
    r = submit(client)
    assert r.status_code == 503 and "no job worker has been alive for" in r.get_json()["error"]["message"]


def test_a_grace_of_0_never_refuses(settings, registry):
    settings.job_worker_grace_s = 0
    client = create_app(settings, registry=registry).test_client()
    assert submit(client).status_code == 202
    assert client.get("/readyz").get_json()["jobs"]["accepting_jobs"] is True


def test_a_job_whose_record_is_lost_is_410_until_the_sweep_deletes_it(settings, registry):
    settings.job_batch_size = 2
    settings.job_orphan_age_s = 0.05
    app = create_app(settings, registry=registry)
    client = app.test_client()
    service = app.extensions[JOBS_EXTENSION]
    queued = submit(client).get_json()["id"]
    ran = submit(client).get_json()["id"]
    run_queued(app, registry, ran)
    for job_id in (queued, ran):
        service.store.discard(job_id)  # what a Redis restarted without persistence does

    for job_id in (queued, ran):
        for method, path in (("get", ""), ("get", "/result"), ("delete", "")):
            r = getattr(client, method)(f"/v1/jobs/{job_id}{path}")
            assert r.status_code == 410, (method, path, r.get_json())
            error = r.get_json()["error"]
            assert error["code"] == "job_lost" and "lost its record" in error["message"]
            assert error["details"][0]["job_id"] == job_id and error["details"][0]["model"] == "sentiment"
            assert error["details"][0]["total"] == len(TEXTS)
    assert job_samples(client)[("serve_http_jobs", (("state", LOST),))] == 0  # not counted before a sweep

    sweep = Maintenance(settings, service.backends)
    # Each job is deleted once its last write is SERVE_JOB_ORPHAN_AGE_S old: the
    # one written last may come a sweep later.
    deleted: list[str] = []
    wait_for(lambda: deleted.extend(sweep.delete_lost()) or len(deleted) >= 2, 10, "the sweep to delete the lost jobs")
    assert sorted(deleted) == sorted([queued, ran])
    for job_id in (queued, ran):
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 404 and r.get_json()["error"]["code"] == "job_not_found"
    assert list(service.backends.results.jobs()) == []


def test_metrics_report_workers_queue_depth_and_jobs_by_state(client, app, registry):
    service = app.extensions[JOBS_EXTENSION]
    first = submit(client).get_json()["id"]
    submit(client)
    run_queued(app, registry, first)
    cancelled = submit(client).get_json()["id"]
    client.delete(f"/v1/jobs/{cancelled}")
    samples = job_samples(client)
    assert samples[("serve_http_job_backend_up", ())] == 1
    assert samples[("serve_http_job_workers_alive", ())] == 0
    assert samples[("serve_http_job_queue_depth", ())] == service.backends.queue.huey.pending_count() == 3
    by_state = {dict(labels)["state"]: value for (name, labels), value in samples.items() if name == "serve_http_jobs"}
    assert by_state == {"queued": 1, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 1, "lost": 0}
    service.store.beat("test-host:3:ghi")
    assert job_samples(client)[("serve_http_job_workers_alive", ())] == 1


def test_an_unreachable_backend_is_down_in_readyz_and_metrics_while_the_models_are_ready(settings, registry):
    settings.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = create_app(settings, registry=registry).test_client()
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json()["status"] == "ready"
    jobs = r.get_json()["jobs"]
    assert jobs["status"] == "down" and jobs["backend"] == "redis+disk" and jobs["backend_reachable"] is False
    assert jobs["error"]["type"] == "ConnectionError" and "Connection refused" in jobs["error"]["message"]
    assert jobs["accepting_jobs"] is False and "Traceback" not in r.get_data(as_text=True)
    samples = job_samples(client)
    assert samples == {("serve_http_job_backend_up", ()): 0}
