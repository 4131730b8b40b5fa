"""The job subsystem's health end to end: a real Gunicorn, real job worker
processes (``python -m jobs.worker``) and real redis-servers. No job worker:
new jobs are refused (503) once the grace passed, /readyz says degraded;
a volatile Redis is refused by the worker and the web; its restart loses
job records, which then answer 410; a stopped Redis is "down" in /readyz
while the models stay ready."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer, JobWorker, RedisServer, wait_for

pytestmark = pytest.mark.e2e

BASE_ENV = {
    "SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"),
    "SERVE_MODELS": "sentiment",
    "SERVE_JOB_HEARTBEAT_S": "0.5",
    "SERVE_JOB_WORKER_GRACE_S": "2",
    "WORKERS": "2",
}
INPUTS = ["a warm, funny, beautifully acted film", "a dull and lifeless mess"]


def readyz(server: GunicornServer) -> tuple[int, dict]:
    r = requests.get(f"{server.url}/readyz", timeout=10)
    return r.status_code, r.json()


def jobs_health(server: GunicornServer) -> dict:
    status, body = readyz(server)
    assert status == 200 and body["status"] == "ready", body  # the models never depend on the jobs
    return body["jobs"]


def job_metrics(server: GunicornServer) -> dict[str, object]:
    """The job samples of /metrics: name -> value, and serve_http_jobs as {state: value}."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    found: dict[str, object] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "serve_http_jobs":
                found.setdefault("jobs", {})[s.labels["state"]] = s.value
            elif s.name.startswith("serve_http_job_"):
                found[s.name] = s.value
    return found


def submit(server: GunicornServer) -> requests.Response:
    return requests.post(f"{server.url}/v1/jobs", json={"model": "sentiment", "inputs": INPUTS}, timeout=30)


def finished(server: GunicornServer, job_id: str, worker: JobWorker) -> dict:
    def check():
        worker.check_alive()
        job = requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()
        return job if job["status"] not in ("queued", "running") else None

    return wait_for(check, 120, f"job {job_id} to finish")


def worker_run(server: GunicornServer, **env: str) -> subprocess.CompletedProcess:
    """A job worker to its end (one that is refused at start)."""
    return subprocess.run([sys.executable, "-m", "jobs.worker"], cwd=REPO_ROOT, env={**server.env, **env},
                          capture_output=True, text=True, timeout=120)


def test_without_a_worker_jobs_are_refused_after_the_grace_and_accepted_once_one_runs(tmp_path):
    with GunicornServer(tmp_path, env=BASE_ENV) as server:
        health = jobs_health(server)
        assert health["status"] == "degraded" and health["backend"] == "sqlite+disk"
        assert health["workers_alive"] == 0 and health["backend_reachable"] is True
        server.wait_for(lambda: not jobs_health(server)["accepting_jobs"], 30, "the grace to pass")
        print("\n[readyz jobs, no worker]", json.dumps(jobs_health(server)))

        refused = submit(server)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        error = refused.json()["error"]
        assert error["code"] == "no_job_worker" and "SERVE_JOB_WORKER_GRACE_S=2" in error["message"]
        assert "`make worker`" in error["message"] and "no job was created" in error["message"]
        assert "Traceback" not in refused.text
        metrics = job_metrics(server)
        print("[metrics, no worker]", metrics)
        assert metrics["serve_http_job_backend_up"] == 1 and metrics["serve_http_job_workers_alive"] == 0
        assert metrics["serve_http_job_queue_depth"] == 0 and sum(metrics["jobs"].values()) == 0  # nothing was made

        with JobWorker(server) as worker:
            health = server.wait_for(lambda: (h := jobs_health(server))["workers_alive"] >= 1 and h, 30, "a live worker")
            assert health["status"] == "ok" and health["accepting_jobs"] is True
            assert 0 <= health["last_heartbeat_age_s"] < 5
            accepted = submit(server)
            assert accepted.status_code == 202, accepted.text
            job = finished(server, accepted.json()["id"], worker)
            assert job["status"] == "succeeded", job
            metrics = server.wait_for(lambda: (m := job_metrics(server))["serve_http_job_queue_depth"] == 0 and m,
                                      30, "an empty queue")
            print("[readyz jobs, one worker]", json.dumps(jobs_health(server)))
            print("[metrics, one worker]", metrics)
            assert metrics["serve_http_job_workers_alive"] == 1
            assert metrics["jobs"] == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0, "lost": 0}
        assert worker.process.returncode == 0
        # A clean stop takes the worker's heartbeat out at once; the grace then runs from the stop.
        assert jobs_health(server)["workers_alive"] == 0
        server.wait_for(lambda: not jobs_health(server)["accepting_jobs"], 30, "the grace to pass")
        again = submit(server)
        assert again.status_code == 503 and "no job worker has been alive for" in again.json()["error"]["message"]


def test_a_volatile_redis_is_refused_unless_allowed_and_its_restart_leaves_410s_that_the_sweep_clears(tmp_path):
    refusing, allowing = tmp_path / "refusing", tmp_path / "allowing"
    refusing.mkdir()
    allowing.mkdir()
    with RedisServer(tmp_path, volatile=True) as redis_server:
        env = {**BASE_ENV, "REDIS_URL": redis_server.url}
        with GunicornServer(refusing, env=env) as server:
            refused = worker_run(server)
            output = refused.stdout + refused.stderr
            assert refused.returncode == 1, output
            lines = [json.loads(line) for line in output.splitlines() if "SERVE_JOBS_ALLOW_VOLATILE" in line]
            assert [r["level"] for r in lines] == ["CRITICAL"], output  # one line, saying why and what to do
            assert "appendonly yes" in lines[0]["message"] and "loaded model" not in output  # before the models load
            print("\n[worker]", lines[0]["message"])

            health = jobs_health(server)
            assert health["status"] == "down" and health["backend_reachable"] is True
            assert health["error"]["type"] == "job_backend_volatile"
            r = submit(server)
            assert r.status_code == 503 and r.json()["error"]["code"] == "job_backend_volatile"
            assert r.json()["error"]["message"] == health["error"]["message"]
            assert lines[0]["message"] == "job worker: cannot start: " + health["error"]["message"]
            assert requests.get(f"{server.url}/v1/jobs/{'0' * 32}", timeout=10).status_code == 503

        allowed = {**env, "SERVE_JOBS_ALLOW_VOLATILE": "true", "SERVE_JOB_ORPHAN_AGE_S": "8"}
        with GunicornServer(allowing, env=allowed) as server, JobWorker(server) as worker:
            assert "accepted because SERVE_JOBS_ALLOW_VOLATILE=true" in worker.log()
            server.wait_for(lambda: jobs_health(server)["status"] == "ok", 30, "a live worker")
            job_id = submit(server).json()["id"]
            assert finished(server, job_id, worker)["status"] == "succeeded"

            redis_server.kill()  # SIGKILL and start again: every key is gone
            redis_server.start()
            # (a Response is falsy from 400 up: the poll returns it in a list)
            [r] = server.wait_for(lambda: [r for r in [requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10)]
                                           if r.status_code != 503], 30, "the web to reconnect")
            assert r.status_code == 410, r.text
            error = r.json()["error"]
            print("[lost job]", r.status_code, error["message"])
            assert error["code"] == "job_lost" and "lost its record" in error["message"]
            assert error["details"][0]["model"] == "sentiment" and error["details"][0]["total"] == len(INPUTS)
            # The worker's sweep counts it, then deletes its results once unwritten for SERVE_JOB_ORPHAN_AGE_S.
            server.wait_for(lambda: job_metrics(server).get("jobs", {}).get("lost") == 1, 30, "the lost job counted")
            server.wait_for(lambda: requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).status_code == 404,
                            60, "the sweep to delete the lost job's results")
            assert not (allowing / "jobs" / "results" / job_id).exists()
            assert "its record was lost by the job backend; its saved results are deleted" in worker.log()
            assert job_metrics(server)["jobs"]["lost"] == 0
            # Jobs go on after the restart.
            again = submit(server)
            assert again.status_code == 202 and finished(server, again.json()["id"], worker)["status"] == "succeeded"


def test_a_stopped_redis_is_down_in_readyz_while_ready_and_a_persistent_one_keeps_its_jobs(tmp_path):
    with RedisServer(tmp_path) as redis_server:
        env = {**BASE_ENV, "REDIS_URL": redis_server.url}
        with GunicornServer(tmp_path, env=env) as server, JobWorker(server) as worker:
            server.wait_for(lambda: jobs_health(server)["status"] == "ok", 30, "a live worker")
            job_id = submit(server).json()["id"]
            assert finished(server, job_id, worker)["status"] == "succeeded"

            redis_server.stop()
            status, body = readyz(server)
            print("\n[readyz, redis stopped]", status, json.dumps(body["jobs"]))
            assert status == 200 and body["status"] == "ready"
            assert body["jobs"]["status"] == "down" and body["jobs"]["backend_reachable"] is False
            assert body["jobs"]["error"]["type"] == "ConnectionError" and "Traceback" not in json.dumps(body)
            assert job_metrics(server) == {"serve_http_job_backend_up": 0}
            r = submit(server)
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"

            redis_server.start()  # AOF on: the job is still there
            server.wait_for(lambda: jobs_health(server)["status"] == "ok", 30, "the worker back")
            assert requests.get(f"{server.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "succeeded"
            assert job_metrics(server)["jobs"]["succeeded"] == 1
