"""``make serve``: Gunicorn and a job worker under one small supervisor.

    python -m jobs.launch
    python -m jobs.launch --then "make models"    # make serve's first run

Each child runs in its own session, so a Ctrl-C in the terminal reaches this
launcher only; on SIGINT, SIGTERM or SIGHUP it stops both children in order
(SIGTERM: Gunicorn drains its requests, the job worker hands its running job
back to the queue) and exits 0.

A job worker that dies (a non-zero exit, or killed by a signal) is started
again, and Gunicorn serves on meanwhile: the job processes it leaves behind
get SIGTERM (a running job is handed back) and SIGKILL a second later, and
the new worker starts 1 s after the death, twice as long after each further
death up to 30 s; a worker that stayed up 60 s starts that count over. Each
death is one ERROR line (``job worker died (killed by SIGKILL); restart 1 in
1 s``, the count and the delay also as the JSON fields ``restarts`` and
``delay_s``). A child that stops cleanly (exit 0: someone sent SIGTERM to
Gunicorn's master or to the worker) stops the service: the other is stopped
and the launcher exits 0. Gunicorn failing (a non-zero exit, or a signal: 128
+ its number) stops the worker too and the launcher exits with that code, so a
supervisor (Docker, systemd) sees the failure instead of a half-running
service.

A separate launcher rather than Gunicorn hooks: Gunicorn's master forks web
workers from a preloaded app, and a job worker spawned from its hooks would be
restarted and stopped by code that Gunicorn does not know about; two sibling
processes under a small parent are easier to reason about. Scale-out
deployments run the two commands on their own under their own supervisor
(``gunicorn ...`` on web machines, ``python -m jobs.worker`` on job machines;
``deploy/`` has systemd units and a compose file).

``--then COMMAND`` runs a shell command beside the service: ``make serve``
trains its slow models there, so that the first start does not wait for them
(they are ``optional: true``: ``/readyz`` lists them as not ready, with why).
When the command succeeds and has changed a file of the model repository,
Gunicorn re-reads the repository (``SIGHUP``: the master loads, fresh workers
serve) and the job worker, which has no reload, is restarted (on purpose: not
counted as a death). A failed command is logged; the service runs on without
the models it was to make.
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
# How long a dead worker's job processes get to hand their jobs back: huey's
# own consumer gives its processes 1 s after the interrupt too.
ORPHAN_GRACE_S = 1.0


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    # Each child leads its own process group: Gunicorn's workers and the job
    # worker's forked processes are in it, even when the leader itself has died
    # (a job process whose parent was killed would otherwise run on, orphaned).
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass


def _group_alive(child: subprocess.Popen) -> bool:
    _reap_group(child)
    try:
        os.killpg(child.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reap_group(child: subprocess.Popen) -> None:
    # Where the launcher is PID 1 (``docker run`` without --init), a dead
    # worker's orphaned job processes become its own children: reap them, or
    # they stay zombies. Only that group: the live children are Popen's to reap.
    while True:
        try:
            pid, _ = os.waitpid(-child.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


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


def how_it_ended(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL``, from a Popen return code."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-returncode}"


def exit_status(returncode: int) -> int:
    """The launcher's own exit status for a child's return code: a signal is 128 + its number, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


class Backoff:
    """How long to wait before starting a job worker that died.

    ``first`` seconds after the first death, twice as long after each further
    one, at most ``longest``; a worker that stayed up ``steady`` seconds was
    healthy, and its death waits ``first`` again.
    """

    def __init__(self, first: float = 1.0, longest: float = 30.0, steady: float = 60.0) -> None:
        self.first = first
        self.longest = longest
        self.steady = steady
        self._streak = 0

    def delay(self, uptime: float) -> float:
        """The wait before the next start of a worker that died after ``uptime`` seconds."""
        if uptime >= self.steady:
            self._streak = 0
        delay = min(self.longest, self.first * 2 ** self._streak)
        self._streak += 1
        return delay


class SupervisedWorker:
    """The job worker child, started again after a :class:`Backoff` delay whenever it dies."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.restarts = 0  # deaths since the launcher started
        self._restart_at: float | None = None
        self._start()

    def _start(self) -> None:
        self.process = _start("worker")
        self._started_at = time.monotonic()
        self._restart_at = None

    def check(self) -> bool:
        """Look after the worker once; False once it stopped cleanly (exit 0), when the service is to stop."""
        now = time.monotonic()
        if self._restart_at is not None:
            if now >= self._restart_at:
                _reap_group(self.process)
                self._start()
                log.info("job worker started again (restart %d, pid %d)", self.restarts, self.process.pid,
                         extra={"restarts": self.restarts})
            return True
        code = self.process.poll()
        if code is None:
            return True
        if code == 0:
            return False
        self.restarts += 1
        delay = self.backoff.delay(now - self._started_at)
        log.error("job worker died (%s); restart %d in %g s; Gunicorn serves on", how_it_ended(code),
                  self.restarts, delay, extra={"restarts": self.restarts, "delay_s": delay, "returncode": code})
        self._restart_at = now + delay
        self._end_orphans()
        return True

    def _end_orphans(self) -> None:
        # huey's job processes outlive a killed consumer: a busy one hands its
        # job back on SIGTERM, an idle one would take the next job and is killed.
        _signal_group(self.process, signal.SIGTERM)
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while time.monotonic() < deadline and _group_alive(self.process):
            time.sleep(0.05)
        _signal_group(self.process, signal.SIGKILL)

    def replace(self) -> None:
        """Stop the worker and start a new one at once (on purpose: not counted as a death)."""
        stop_all({"worker": self.process})  # its running job goes back to the queue
        self._start()


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


def reload_models(web: subprocess.Popen, worker: SupervisedWorker) -> None:
    """Serve what the model repository holds now: Gunicorn re-reads it, the job worker starts anew."""
    web.send_signal(signal.SIGHUP)  # gunicorn.conf.py on_reload: the master re-reads the repository
    worker.replace()
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
    web = _start("web")
    worker = SupervisedWorker(Backoff())
    then = before = None
    reload_pending = False
    if args.then:
        before = repository_files(settings.model_repository)
        then = subprocess.Popen(args.then, shell=True, cwd=REPO_ROOT, start_new_session=True)
    code = 0
    try:
        while not stopping:
            if web.poll() is not None:
                code = exit_status(web.returncode)
                if code:
                    log.error("Gunicorn stopped (%s); stopping the job worker", how_it_ended(web.returncode))
                else:
                    log.info("Gunicorn stopped cleanly; stopping the job worker")
                break
            if not worker.check():
                log.info("the job worker stopped cleanly; stopping Gunicorn")
                break
            if then is not None and then.poll() is not None:
                if then.returncode != 0:
                    log.error("%r exited with %s; the models it was to make stay unavailable", args.then, then.returncode)
                else:
                    reload_pending = repository_files(settings.model_repository) != before
                then = None
            if reload_pending and catches(web.pid, signal.SIGHUP):
                reload_models(web, worker)
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
        stop_all({"web": web, "worker": worker.process})
        if worker.restarts:
            log.info("the job worker was restarted %d time(s)", worker.restarts, extra={"restarts": worker.restarts})
    return code


if __name__ == "__main__":
    sys.exit(main())
