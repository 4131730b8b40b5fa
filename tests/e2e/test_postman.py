"""The Postman collection of ``make postman``, run by newman as the README
shows, against a real Gunicorn and job worker serving the repository's own
models (as ``make serve`` does): every operation of openapi.yml is in it, and
every request is answered with a 2xx."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections import Counter

import pytest
import yaml

from scripts import gen_postman
from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer, JobWorker

pytestmark = pytest.mark.e2e

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
# Repeated until the submitted job finished, and the image row until its image is stored.
POLLED = ("GET /v1/jobs/{job_id}", "GET /generated-images/{image_id}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("postman")
    with GunicornServer(tmp, env={"WORKERS": "2"}) as server, JobWorker(server):
        yield server


def readme_newman_command() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Postman\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    (command,) = [line for line in block.splitlines() if "newman run" in line]
    return command


def openapi_operations() -> set[str]:
    paths = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())["paths"]
    return {f"{method.upper()} {path}" for path, item in paths.items() for method in item if method in METHODS}


def body_of(response: dict) -> str:
    return bytes(response.get("stream", {}).get("data", [])).decode(errors="replace")


def test_newman_runs_every_operation_with_a_2xx(server, tmp_path, capsys):
    out = tmp_path / "postman"
    collection = gen_postman.write(out)
    operation_of = {item["id"]: op for op, item in gen_postman.requests_of(json.loads(collection.read_text())).items()}
    assert set(operation_of.values()) == openapi_operations()

    report = tmp_path / "newman.json"
    command = readme_newman_command().replace("var/postman", shlex.quote(str(out)))
    command += f" --env-var baseUrl={server.url} --reporters json --reporter-json-export {shlex.quote(str(report))}"
    done = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert report.exists(), done.stdout + done.stderr
    run = json.loads(report.read_text())["run"]

    answered = [(operation_of[e["item"]["id"]], e.get("response", {})) for e in run["executions"]]
    wrong = [f"{op} -> {r.get('code', 'no response')}: {body_of(r)[:300]}"
             for op, r in answered if not 200 <= r.get("code", 0) < 300]
    assert not wrong, f"{len(wrong)} of {len(answered)} requests not 2xx:\n" + "\n".join(wrong)
    failures = [f"{f['source'].get('name')}: {f['error'].get('message')}" for f in run["failures"]]
    assert not failures, "\n".join(failures)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Each operation exactly once, but the job status, polled until the job finished.
    runs = Counter(op for op, _ in answered)
    for polled in POLLED:
        assert runs.pop(polled) >= 1
    assert runs == {op: 1 for op in openapi_operations() - set(POLLED)}
    with capsys.disabled():
        print(f"\n[newman] requests={run['stats']['requests']['total']}, operations={len(operation_of)}, "
              f"assertions={run['stats']['assertions']['total']}, failures={len(run['failures'])}")
