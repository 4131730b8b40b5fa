"""`make serve`'s launcher: Gunicorn and a job worker live and die together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

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
