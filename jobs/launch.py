"""``make serve``: Gunicorn and a job worker, started and stopped together.

    python -m jobs.launch

Each child runs in its own session, so a Ctrl-C in the terminal reaches this
launcher only; it then stops both children in order (SIGTERM: Gunicorn drains
its requests, the job worker hands its running job back to the queue). If
either child exits on its own, the other is stopped too and the launcher exits
with that child's code, so a supervisor (Docker, systemd) sees the failure
instead of a half-running service.

A separate launcher rather than Gunicorn hooks: Gunicorn's master forks web
workers from a preloaded app, and a job worker spawned from its hooks would be
restarted and stopped by code that Gunicorn does not know about; two sibling
processes under a small parent are easier to reason about. Scale-out
deployments run the two commands on their own (``gunicorn ...`` on web
machines, ``python -m jobs.worker`` on job machines).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from serving.settings import REPO_ROOT

COMMANDS = {
    "web": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "serve_http:app"],
    "worker": [sys.executable, "-m", "jobs.worker"],
}


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    # Each child leads its own process group: Gunicorn's workers and the job
    # worker's forked processes are in it, even when the leader itself has died
    # (a job process whose parent was killed would otherwise run on, orphaned).
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


def stop_all(children: dict[str, subprocess.Popen], timeout: float = 40) -> None:
    for child in children.values():
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for child in children.values():  # whatever of a group outlived its leader
        _signal_group(child, signal.SIGKILL)


def main() -> int:
    stopping: list[int] = []

    def on_signal(signum, frame) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    children = {
        name: subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True) for name, argv in COMMANDS.items()
    }
    code = 0
    try:
        while not stopping:
            exited = {name: child.returncode for name, child in children.items() if child.poll() is not None}
            if exited:
                name, code = next(iter(exited.items()))
                print(f"launch: {name} exited with {code}; stopping the rest", file=sys.stderr)
                code = code or 1
                break
            time.sleep(0.2)  # a supervisor's poll of its children
    finally:
        stop_all(children)
    return code


if __name__ == "__main__":
    sys.exit(main())
