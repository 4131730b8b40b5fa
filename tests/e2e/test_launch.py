"""`make serve`'s launcher: Gunicorn and a job worker live and die together."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests
import yaml

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


@pytest.fixture
def launch(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "WORKERS": "1", "SERVE_MODELS": "sentiment",
           "SERVE_JOBS_DIR": str(tmp_path / "jobs"), "SERVE_CACHE_DIR": str(tmp_path / "cache"), "ACCESS_LOG": ""}
    output = open(tmp_path / "launch.out", "wb")
    process = subprocess.Popen([sys.executable, "-m", "jobs.launch"], cwd=REPO_ROOT, env=env,
                               stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def job_done() -> bool:
        assert process.poll() is None, (tmp_path / "launch.out").read_text()
        try:
            r = requests.post(f"{url}/v1/jobs", json={"model": "sentiment", "inputs": ["a fine film"]}, timeout=5)
        except requests.ConnectionError:
            return False
        job_id = r.json()["id"]
        return wait_for(lambda: requests.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()["status"] == "succeeded",
                        120, "a job through the launched worker")

    # Both halves work: the web answers and the worker runs a job.
    wait_for(job_done, 180, "the launched service")
    yield process, children(process.pid)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    output.close()


def test_ctrl_c_stops_web_and_worker(launch):
    process, kids = launch
    assert set(kids) == {"web", "worker"}
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    wait_for(lambda: not any(alive(pid) for pid in kids.values()), 30, "both children to exit")


def group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split() if alive(int(pid))]


def test_a_dead_worker_takes_the_web_down_with_it(launch):
    process, kids = launch
    forked = children(kids["worker"])  # the job processes the worker forked
    assert forked, "the job worker forked no process"
    os.kill(kids["worker"], signal.SIGKILL)
    assert process.wait(timeout=60) != 0
    wait_for(lambda: not alive(kids["web"]), 30, "Gunicorn to be stopped")
    # Its orphaned job processes do not run on.
    wait_for(lambda: not group_members(kids["worker"]), 30, "the killed worker's job processes to exit")


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
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
