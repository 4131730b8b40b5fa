"""`make serve`'s launcher: Gunicorn serves on while a dead job worker is started again;
a clean stop of either child stops the service."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml

from jobs.launch import Backoff
from serving.settings import REPO_ROOT
from tests.e2e.server import free_port, wait_for

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to reap it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def children(pid: int) -> dict[str, int]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        child, args = line.strip().split(" ", 1)
        found["web" if "gunicorn" in args else "worker"] = int(child)
    return found


class Launched:
    """``python -m jobs.launch`` serving the sentiment model, its output in a file."""

    def __init__(self, tmp_path) -> None:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WORKERS": "1", "SERVE_MODELS": "sentiment",
               "SERVE_JOBS_DIR": str(tmp_path / "jobs"), "SERVE_CACHE_DIR": str(tmp_path / "cache"), "ACCESS_LOG": ""}
        self.output = tmp_path / "launch.out"
        with open(self.output, "wb") as output:
            self.process = subprocess.Popen([sys.executable, "-m", "jobs.launch"], cwd=REPO_ROOT, env=env,
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        self.kids: dict[str, int] = {}  # the launcher's children once it serves

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def running(self) -> None:
        assert self.process.poll() is None, self.log()[-3000:]

    def submit(self) -> str | None:
        """A job's id, or None while the web does not answer or has no job worker to take it."""
        self.running()
        try:
            r = requests.post(f"{self.url}/v1/jobs", json={"model": "sentiment", "inputs": ["a fine film"]}, timeout=5)
        except requests.ConnectionError:
            return None
        if r.status_code == 503:  # no job worker alive yet: it is (re)starting
            return None
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job_succeeds(self, timeout: float) -> bool:
        job_id = wait_for(self.submit, timeout, "the web to take a job")

        def finished() -> str | None:
            self.running()
            status = requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=5).json()["status"]
            return status if status in ("succeeded", "failed", "cancelled") else None

        status = wait_for(finished, timeout, "a job through the launched worker")
        assert status == "succeeded", self.log()[-3000:]
        return True


@pytest.fixture
def launch(tmp_path):
    launched = Launched(tmp_path)
    # Both halves work: the web answers and the worker runs a job.
    launched.job_succeeds(180)
    launched.kids = children(launched.process.pid)
    assert set(launched.kids) == {"web", "worker"}
    yield launched
    if launched.process.poll() is None:  # a failed test: nothing of it runs on
        for pid in {*launched.kids.values(), *children(launched.process.pid).values()}:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(launched.process.pid, signal.SIGKILL)
        launched.process.wait()


def test_ctrl_c_stops_web_and_worker(launch):
    launch.process.send_signal(signal.SIGINT)
    assert launch.process.wait(timeout=60) == 0
    wait_for(lambda: not any(alive(pid) for pid in launch.kids.values()), 30, "both children to exit")


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if alive(int(pid))]


def kill_worker_and_wait_for_the_next(launch, old: int, restart: int, delay: int) -> int:
    """SIGKILL job worker ``old``, poll /healthz until a new one is ready; the new one's pid."""
    ready = launch.log().count("job worker ready")
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    answers: list[int] = []

    def worker_back() -> int | None:
        launch.running()
        # A refused or timed-out /healthz fails the test here: the web must not go down.
        answers.append(requests.get(f"{launch.url}/healthz", timeout=5).status_code)
        new = children(launch.process.pid).get("worker")
        return new if new not in (None, old) and launch.log().count("job worker ready") > ready else None

    new = wait_for(worker_back, 120, "the job worker to be started again")
    outage = time.monotonic() - killed_at
    print(f"\nrestart {restart}: outage {outage:.2f} s, {len(answers)} /healthz answers {sorted(set(answers))}")
    assert set(answers) == {200} and len(answers) >= 10, answers
    assert outage >= delay  # the restart waited its delay
    log = launch.log()
    assert re.search(rf"job worker died \(killed by SIGKILL\); restart {restart} in {delay} s", log), log[-3000:]
    assert f"job worker started again (restart {restart}, pid {new})" in log
    # The killed worker's orphaned job processes do not run on.
    wait_for(lambda: not group_members(old), 30, "the killed worker's job processes to exit")
    return new


def test_a_killed_worker_is_started_again_while_the_web_serves_on(launch):
    assert children(launch.kids["worker"]), "the job worker forked no process"
    second = kill_worker_and_wait_for_the_next(launch, launch.kids["worker"], restart=1, delay=1)
    assert launch.job_succeeds(120)
    # Dead again within its first minute: the next start waits twice as long.
    kill_worker_and_wait_for_the_next(launch, second, restart=2, delay=2)
    assert launch.job_succeeds(120)
    assert children(launch.process.pid)["web"] == launch.kids["web"]  # Gunicorn was never stopped
    launch.process.send_signal(signal.SIGTERM)
    assert launch.process.wait(timeout=60) == 0
    assert "the job worker was restarted 2 time(s)" in launch.log()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 0), (signal.SIGKILL, 128 + signal.SIGKILL)],
                         ids=["SIGTERM", "SIGKILL"])
def test_gunicorn_stopping_stops_the_worker_and_the_launcher_with_gunicorns_status(launch, signum, status):
    worker = launch.kids["worker"]
    os.kill(launch.kids["web"], signum)
    assert launch.process.wait(timeout=60) == status, launch.log()[-3000:]
    wait_for(lambda: not group_members(worker) and not group_members(launch.kids["web"]), 30,
             "the job worker and Gunicorn's workers to exit")
    assert "job worker died" not in launch.log()


def test_a_worker_stopped_cleanly_stops_the_service(launch):
    os.kill(launch.kids["worker"], signal.SIGTERM)  # huey's consumer exits 0
    assert launch.process.wait(timeout=60) == 0, launch.log()[-3000:]
    wait_for(lambda: not group_members(launch.kids["web"]), 30, "Gunicorn to exit")
    log = launch.log()
    assert "the job worker stopped cleanly; stopping Gunicorn" in log and "job worker died" not in log


def test_the_restart_delay_doubles_to_its_cap_and_starts_over_after_a_steady_run():
    backoff = Backoff()
    assert [backoff.delay(uptime=5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(uptime=60) == 1  # up a minute: healthy, the count starts over
    assert backoff.delay(uptime=0.5) == 2


def test_then_makes_a_model_beside_the_service_which_then_serves_it(tmp_path):
    # `make serve`'s first run: an optional model is missing at start, a command
    # beside the service makes it, then the web and the job worker serve it.
    repo = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "models" / "sentiment", repo / "sentiment")
    later = repo / "later"
    later.mkdir()
    manifest = yaml.safe_load((repo / "sentiment" / "model.yaml").read_text())
    (later / "model.yaml").write_text(yaml.safe_dump({**manifest, "optional": True}))
    # The command waits on a fifo until the test has seen the service without the model.
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    artifacts = " ".join(str(repo / "sentiment" / name) for name in ("model.joblib", "labels.json", "metrics.json", "SHA256SUMS"))
    then = f"cat {gate} >/dev/null && cp {artifacts} {later}/"
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WORKERS": "1", "SERVE_MODEL_REPOSITORY": str(repo),
           "SERVE_JOBS_DIR": str(tmp_path / "jobs"), "SERVE_CACHE_DIR": str(tmp_path / "cache"), "ACCESS_LOG": ""}
    log = tmp_path / "launch.out"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "jobs.launch", "--then", then], cwd=REPO_ROOT, env=env,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def readiness() -> dict | None:
        assert process.poll() is None, log.read_text()
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
        except requests.ConnectionError:
            return None
        return r.json() if r.status_code == 200 else None

    def job_status(model: str) -> str:
        job_id = requests.post(f"{url}/v1/jobs", json={"model": model, "inputs": ["a warm, funny film"]}, timeout=5).json()["id"]

        def finished() -> str | None:
            status = requests.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()["status"]
            return status if status in ("succeeded", "failed") else None

        return wait_for(finished, 120, f"a job of {model}")

    try:
        state = wait_for(readiness, 180, "the service without the model")["models"]["later"]
        assert state["ready"] is False and state["optional"] is True and "SHA256SUMS" in state["reason"]
        assert requests.post(f"{url}/v1/models/later/predict", json={"inputs": ["fine"]}, timeout=5).status_code == 503
        with open(gate, "w"):  # the command goes on
            pass
        wait_for(lambda: (readiness() or {}).get("models", {}).get("later", {}).get("ready"), 120, "the model made beside")
        r = requests.post(f"{url}/v1/models/later/predict", json={"inputs": ["a warm, funny film"]}, timeout=10)
        assert r.status_code == 200 and r.json()["outputs"][0]["category"] == "fresh"
        # The restarted job worker serves it too: the first one started without it.
        assert job_status("later") == "succeeded", log.read_text()[-3000:]
        assert "model repository changed" in log.read_text()
        assert "job worker died" not in log.read_text()  # the reload's restart is no death
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
