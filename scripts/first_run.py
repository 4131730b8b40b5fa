"""Time the first ``make serve`` of a fresh copy of this repository, as a user sees it.

    python3 scripts/first_run.py                      # this working tree
    python3 scripts/first_run.py --source ../other --keep

Copies the working tree (tracked files and untracked ones git does not
ignore, so no ``.venv``, no trained models, no ``var/``) to a temporary
folder and ``git init``s it, runs ``make serve`` there under a
pseudo-terminal (so progress bars draw as they do for a user) with a free
``PORT``, timestamps every chunk of output, polls ``/readyz`` until it answers
200 and then until it lists every model as ready (the models ``make serve``
trains beside the running service), then stops the server as Ctrl-C would
(SIGINT to make's process group). It prints the install, models and ready
times, each step's duration (the commands make echoes) and the longest
stretch without output before ``/readyz`` answered 200, with the step and the
last line before it. Standard library only: it runs before any
virtual environment exists. The pip cache is the user's, so a warm cache
makes a fast install, as on a machine that has installed once.

Exit status 0 when the server got ready (and within ``--max-ready`` /
``--max-silence`` when given), 1 otherwise.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# A recipe line as make echoes it: the venv's creation or a command of the venv.
STEP = re.compile(r"^(\S+ -m venv |\.venv/bin/)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLUMNS, ROWS = 120, 40


@dataclass
class Transcript:
    """Output chunks as they arrived, in seconds since the start."""

    started: float = field(default_factory=time.monotonic)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    def add(self, data: bytes) -> None:
        self.chunks.append((time.monotonic() - self.started, data))

    def lines(self) -> list[tuple[float, str]]:
        """Each output line with the time its first byte arrived, as the
        terminal last showed it (the text after its last carriage return)."""
        lines: list[tuple[float, str]] = []
        pending, since = "", None
        for t, data in self.chunks:
            for piece in re.split(r"(\n)", data.decode("utf-8", "replace")):
                if piece == "\n":
                    lines.append((since if since is not None else t, visible(pending)))
                    pending, since = "", None
                elif piece:
                    since = t if since is None else since
                    pending += piece
        if pending:
            lines.append((since if since is not None else 0.0, visible(pending)))
        return lines

    def last_line_before(self, t: float) -> str:
        text = b"".join(data for when, data in self.chunks if when <= t).decode("utf-8", "replace")
        shown = [visible(line) for line in text.split("\n")]
        return next((line for line in reversed(shown) if line), "")


def visible(text: str) -> str:
    """What a line shows once drawn: escapes removed, the last carriage-return segment."""
    segments = [s for s in ANSI.sub("", text).split("\r") if s.strip()]
    return segments[-1].strip() if segments else ""


def copy_tree(source: Path, dest: Path) -> int:
    """Copy what a clone would hold (plus untracked, not ignored files) into ``dest``; the file count."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z", "-co", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")
    copied = 0
    for name in filter(None, listed):
        path = source / name
        if not path.is_file() and not path.is_symlink():  # deleted in the working tree
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target, follow_symlinks=False)
        copied += 1
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    return copied


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readiness(port: int) -> dict | None:
    """The body of a 200 from /readyz, else None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return json.load(response) if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):  # not listening yet, 503 while loading
        return None


def run_make_serve(
    folder: Path, port: int, timeout: float, transcript: Transcript
) -> tuple[float | None, float | None, int | None]:
    """``make serve`` under a pty until /readyz is 200 and every model ready, or
    make ends, then Ctrl-C: both times, and make's exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**os.environ, "PORT": str(port), "COLUMNS": str(COLUMNS)}
    env.pop("VIRTUAL_ENV", None)  # an activated venv is not the clone's
    make = subprocess.Popen(
        ["make", "serve"], cwd=folder, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            transcript.add(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready_at = all_ready_at = None
    while make.poll() is None and time.monotonic() - transcript.started < timeout:
        body = readiness(port)
        if body is not None:
            ready_at = ready_at or time.monotonic() - transcript.started
            if all(state["ready"] for state in body["models"].values()):
                all_ready_at = time.monotonic() - transcript.started
                break
        # The poll interval: fine until the first 200, then easy on the models training beside the service.
        time.sleep(0.2 if ready_at is None else 2.0)
    if make.poll() is None:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C: jobs.launch stops Gunicorn and the job worker
        try:
            make.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    reader.join(5)
    os.close(master)
    return ready_at, all_ready_at, make.returncode


def report(
    transcript: Transcript, ready_at: float | None, all_ready_at: float | None, port: int, folder: Path
) -> tuple[float, str, str]:
    """Print the figures; returns the longest silence, its step and the line before it."""
    end = ready_at if ready_at is not None else (transcript.chunks[-1][0] if transcript.chunks else 0.0)
    steps = [(t, line) for t, line in transcript.lines() if STEP.match(line)]
    first_training = next((t for t, line in steps if "training/" in line), None)
    launch = next((t for t, line in steps if "-m jobs.launch" in line), None)
    # Up to the launch one step follows another; after it, make trains beside the service.
    serial = [(t, line) for t, line in steps if launch is None or t <= launch]
    beside = [(t, line) for t, line in steps if launch is not None and t > launch]

    times = [0.0, *(t for t, _ in transcript.chunks if t <= end), end]
    gap, gap_at = max((b - a, a) for a, b in zip(times, times[1:]))
    in_step = next((line for t, line in reversed(steps) if t <= gap_at), "(before the first step)")
    before = transcript.last_line_before(gap_at)

    def seconds(a: float | None, b: float | None) -> str:
        return f"{b - a:6.1f} s" if a is not None and b is not None else "     - "

    print(f"\n== first run of make serve in {folder} (PORT={port})")
    print(f"install {seconds(0.0, first_training or launch)}  (start -> first training command)")
    print(f"models  {seconds(first_training, launch)}  (first training command -> python -m jobs.launch)")
    print(f"serve   {seconds(launch, ready_at)}  (python -m jobs.launch -> /readyz 200)")
    print(f"ready   {seconds(0.0, ready_at)}  (start -> /readyz 200)" if ready_at is not None else "ready   never")
    print(f"all     {seconds(0.0, all_ready_at)}  (start -> every model ready in /readyz)")
    print(f"longest silence {gap:.1f} s at {gap_at:.1f} s, in step: {short(in_step)}")
    print(f"  last line before it: {short(before)}")
    print("steps:")
    for (t, line), following in zip(serial, [*(t for t, _ in serial[1:]), end]):
        print(f"  {following - t:6.1f} s  {short(line)}")
    for t, line in beside:
        print(f"  from {t:6.1f} s, beside the service: {short(line)}")
    return gap, in_step, before


def short(line: str, width: int = 110) -> str:
    return line if len(line) <= width else line[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="first_run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="the working tree to copy (default: this one)")
    parser.add_argument("--port", type=int, help="PORT for the server (default: a free one)")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds (default: 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its .venv, models, var/)")
    parser.add_argument("--max-ready", type=float, help="exit 1 if /readyz took longer than this many seconds")
    parser.add_argument("--max-silence", type=float, help="exit 1 if the output paused longer than this many seconds")
    args = parser.parse_args(argv)

    parent = Path(tempfile.mkdtemp(prefix="first-run-"))
    folder = parent / args.source.resolve().name
    try:
        copied = copy_tree(args.source.resolve(), folder)
        port = args.port or free_port()
        print(f"first_run: {copied} files of {args.source.resolve()} copied to {folder}; make serve, PORT={port}", flush=True)
        transcript = Transcript()
        ready_at, all_ready_at, code = run_make_serve(folder, port, args.timeout, transcript)
        gap, _, _ = report(transcript, ready_at, all_ready_at, port, folder)
    finally:
        if args.keep:
            print(f"kept {parent}")
        else:
            shutil.rmtree(parent, ignore_errors=True)
    if ready_at is None:
        print(f"first_run: the server never answered /readyz 200 (make exited with {code})", file=sys.stderr)
        return 1
    if args.max_ready is not None and ready_at > args.max_ready:
        print(f"first_run: ready after {ready_at:.1f} s, over --max-ready {args.max_ready}", file=sys.stderr)
        return 1
    if args.max_silence is not None and gap > args.max_silence:
        print(f"first_run: {gap:.1f} s without output, over --max-silence {args.max_silence}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
