"""``make serve``: Gunicorn and a job worker, started and stopped together.

    python -m jobs.launch
    python -m jobs.launch --then "make models"    # make serve's first run

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

``--then COMMAND`` runs a shell command beside the service: ``make serve``
trains its slow models there, so that the first start does not wait for them
(they are ``optional: true``: ``/readyz`` lists them as not ready, with why).
When the command succeeds and has changed a file of the model repository,
Gunicorn re-reads the repository (``SIGHUP``: the master loads, fresh workers
serve) and the job worker, which has no reload, is restarted. A failed command
is logged; the service runs on without the models it was to make.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serving import logs
from serving.settings import REPO_ROOT, Settings

log = logging.getLogger("jobs.launch")

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


def _start(name: str) -> subprocess.Popen:
    return subprocess.Popen(COMMANDS[name], cwd=REPO_ROOT, start_new_session=True)


def repository_files(folder: Path) -> set[tuple[str, int, int]]:
    """Every file of the model repository with its size and modification time (bytecode aside:
    importing a folder's model.py writes some)."""
    return {
        (str(path), stat.st_size, stat.st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        for stat in [path.stat()]
    }


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` handles ``signum`` (Linux's /proc; elsewhere: assumed).

    Gunicorn sets its SIGHUP handler once the app is preloaded; a SIGHUP
    before that would stop it instead of reloading it.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), None)
    return caught is None or bool(int(caught, 16) >> (signum - 1) & 1)


def reload_models(children: dict[str, subprocess.Popen]) -> None:
    """Serve what the model repository holds now: Gunicorn re-reads it, the job worker starts anew."""
    children["web"].send_signal(signal.SIGHUP)  # gunicorn.conf.py on_reload: the master re-reads the repository
    stop_all({"worker": children["worker"]})  # its running job goes back to the queue
    children["worker"] = _start("worker")
    log.info("model repository changed: Gunicorn re-reads it, the job worker restarted")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--then", metavar="COMMAND",
        help="a shell command run beside the service; if it succeeds and changes the model repository, "
        "the service reloads its models",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    # Its own lines in the children's format: one stream, one format.
    logging.config.dictConfig(logs.logging_config(settings.log_format, settings.log_level))
    stopping: list[int] = []

    def on_signal(signum, frame) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    children = {name: _start(name) for name in COMMANDS}
    then = before = None
    reload_pending = False
    if args.then:
        before = repository_files(settings.model_repository)
        then = subprocess.Popen(args.then, shell=True, cwd=REPO_ROOT, start_new_session=True)
    code = 0
    try:
        while not stopping:
            exited = {name: child.returncode for name, child in children.items() if child.poll() is not None}
            if exited:
                name, code = next(iter(exited.items()))
                log.error("%s exited with %s; stopping the rest", name, code)
                code = code or 1
                break
            if then is not None and then.poll() is not None:
                if then.returncode != 0:
                    log.error("%r exited with %s; the models it was to make stay unavailable", args.then, then.returncode)
                else:
                    reload_pending = repository_files(settings.model_repository) != before
                then = None
            if reload_pending and catches(children["web"].pid, signal.SIGHUP):
                reload_models(children)
                reload_pending = False
            time.sleep(0.2)  # a supervisor's poll of its children
    finally:
        if then is not None and then.poll() is None:
            # SIGINT, as Ctrl-C: a training script removes its half-written files.
            _signal_group(then, signal.SIGINT)
            try:
                then.wait(20)
            except subprocess.TimeoutExpired:
                _signal_group(then, signal.SIGKILL)
                then.wait()
        stop_all(children)
    return code


if __name__ == "__main__":
    sys.exit(main())
