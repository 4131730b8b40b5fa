"""Does a model still compute in a child forked after ``load()``, as a Gunicorn worker does?

Runs in a fresh interpreter: in the test process, earlier tests have already
started OpenMP. If ``load()`` ran torch compute, the forked child hangs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from serving.settings import REPO_ROOT

_FORK_AND_WAIT = """
pid = os.fork()
if pid == 0:
    {predict}
    os._exit(0)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit("forked child hung")
"""


def assert_predicts_after_fork(setup: str, predict: str, timeout: float = 180) -> None:
    """``setup`` loads the models in the parent; ``predict`` (one line) runs in the forked child."""
    script = "import os, sys, time\n" + textwrap.dedent(setup) + _FORK_AND_WAIT.format(predict=predict)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
