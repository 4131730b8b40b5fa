"""The README's curl examples, run as written against a real Gunicorn."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e


def sh_blocks(heading: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def try_it_blocks() -> list[str]:
    return sh_blocks("## Try it")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The repository's own models, as `make serve` runs them.
    with GunicornServer(tmp_path_factory.mktemp("readme"), env={"WORKERS": "2"}) as server:
        yield server


def test_every_readme_curl_answers_as_documented(server, tmp_path):
    blocks = try_it_blocks()
    assert len(blocks) >= 6
    # Each curl also prints its status on a line of its own.
    script = "set -euo pipefail\ncurl() { command curl -w '\\n@@%{http_code}\\n' \"$@\"; }\n"
    script += "\n".join(block.replace("localhost:8000", f"127.0.0.1:{server.port}") for block in blocks)
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = re.findall(r"(.*?)\n@@(\d{3})\n", done.stdout, re.S)
    curls = sum(block.count("curl ") for block in blocks)
    assert len(answers) == curls
    statuses = [int(status) for _, status in answers]
    # All succeed but the two mistakes shown at the end.
    assert statuses[:-2] == [200] * (curls - 2)
    assert statuses[-2:] == [400, 422]
    for body, _ in answers:
        json.loads(body)
    detect = json.loads(answers[0][0])
    assert len(detect["responses"][0]["objects"]) == 1


def test_readme_observability_commands_work(server):
    (block,) = sh_blocks("## Observability")
    requests_seen = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block.replace("localhost:8000", f"127.0.0.1:{server.port}")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert requests_seen.returncode == 0, requests_seen.stderr
    assert re.search(r'^serve_http_requests_total\{.*route="/readyz".*\} [1-9]', requests_seen.stdout, re.M)


def test_readme_stream_example_runs_as_written(server):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Real-time detection over WebSocket", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    code = code.replace("localhost:8000", f"127.0.0.1:{server.port}")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ready" and "'score_th': 0.5" in lines[1] and "'maxResults': 5" in lines[1]
    assert [line.split(" ", 1)[0] for line in lines[2:]] == ["1", "2", "3"]
    assert all("['face']" in line for line in lines[2:]), lines
