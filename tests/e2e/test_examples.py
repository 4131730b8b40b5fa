"""Every operation's example, as ``openapi.yml`` documents it, sent to a live
Gunicorn (and job worker) serving the repository's models: each must get its
documented 2xx. This is what Swagger's "Try it out" and a Postman import send.

The job operations take their ``job_id`` from the submit answer, as the
document's ``links`` say. Cancelling needs a job that is still queued or
running, so that one job carries many inputs. The repository operations run
last (unload, then load again), since they replace the workers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import yaml

from serving.settings import REPO_ROOT
from tasks.image import EXAMPLE_IMAGE_FILE
from tests.e2e.server import GunicornServer, JobWorker, wait_for

pytestmark = pytest.mark.e2e

DOCUMENT = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text(encoding="utf-8"))
JOB_OPERATIONS = ("getJob", "jobResult", "cancelJob")
# The text-to-image operations whose answer exists once the first image row's job is done.
IMAGE_OPERATIONS = ("getGeneratedImageUrl", "jobFile")
LAST = ("unloadModel", "loadModel")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    found = [
        (method.upper(), path, operation)
        for path, methods in DOCUMENT["paths"].items()
        for method, operation in methods.items()
    ]
    order = {name: i for i, name in enumerate(LAST)}
    return sorted(found, key=lambda op: order.get(op[2]["operationId"], -1))


def success_codes(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation["responses"] if code.startswith("2")}


def bodies(operation: dict[str, Any]) -> list[tuple[str, Any, str | None]]:
    """(media type, example, its name) for each example of the request body; [] when it has none.

    The generic predict operation's examples are named by the model they are for."""
    content = operation.get("requestBody", {}).get("content", {})
    for media_type in ("application/json", "multipart/form-data"):
        if media_type in content:
            media = content[media_type]
            if "examples" in media:
                return [(media_type, e["value"], key) for key, e in media["examples"].items()]
            return [(media_type, media.get("example"), None)]
    return []


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples")
    env = {"SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"), "WORKERS": "2", "THREADS": "4"}
    with GunicornServer(tmp, env=env) as server:
        worker = JobWorker(server).start()
        yield server
        worker.stop()


def send(url: str, method: str, path: str, operation: dict[str, Any], body: tuple[str, Any, str | None] | None,
         path_values: dict[str, Any]) -> requests.Response:
    values = {p["name"]: p["example"] for p in operation.get("parameters", []) if "example" in p}
    values.update(path_values)
    if body is not None and path == "/v1/models/{name}/predict":
        values["name"] = body[2]
    for parameter in operation.get("parameters", []):
        assert parameter["name"] in values, f"{operation['operationId']}: parameter {parameter['name']} has no example"
    query = {p["name"]: values[p["name"]] for p in operation.get("parameters", []) if p["in"] == "query"}
    target = path.format(**{p["name"]: values[p["name"]] for p in operation.get("parameters", []) if p["in"] == "path"})
    kwargs: dict[str, Any] = {"params": query, "timeout": 120}
    if body is not None:
        media_type, example, _ = body
        if media_type == "application/json":
            assert example is not None, f"{operation['operationId']}: its JSON body has no example"
            kwargs["json"] = example
        else:
            form = dict(example or {})
            files = {}
            for name, schema in operation["requestBody"]["content"][media_type]["schema"]["properties"].items():
                if schema.get("format") == "binary":
                    data = form.pop(name, None)
                    files[name] = (name, data.encode() if isinstance(data, str) else EXAMPLE_IMAGE_FILE.read_bytes())
            kwargs["data"] = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in form.items()}
            kwargs["files"] = files
    return requests.request(method, url + target, **kwargs)


def test_every_operation_example_gets_its_documented_2xx(live, capsys):
    failures, sent = [], 0
    job_id = cancel_id = None
    for method, path, operation in operations():
        name = operation["operationId"]
        path_values: dict[str, Any] = {}
        if name in JOB_OPERATIONS:
            path_values["job_id"] = cancel_id if name == "cancelJob" else job_id
            if name == "jobResult":  # a job's result exists once it succeeded
                wait_for(lambda: requests.get(f"{live.url}/v1/jobs/{job_id}", timeout=10).json()["status"] == "succeeded",
                         120, "the example job")
        if name in IMAGE_OPERATIONS:  # image row 1 (the example's) has its image once its job succeeded
            row = wait_for(lambda: (r := requests.get(f"{live.url}/generated-images/1", timeout=10).json())["progress"] == 100
                           and r, 120, "the example image")
            if name == "jobFile":
                path_values["job_id"] = row["job_id"]
        for body in bodies(operation) or [None]:
            response = send(live.url, method, path, operation, body, path_values)
            sent += 1
            if response.status_code not in success_codes(operation):
                failures.append(f"{method} {path} ({name}): {response.status_code} {response.text[:300]}")
            elif name == "submitJob" and job_id is None:
                job_id = response.json()["id"]
        if name == "submitJob":  # a job long enough to be cancelled while it runs
            big = requests.post(f"{live.url}/v1/jobs", json={"model": "minilm-sentiment", "inputs": ["a fine film"] * 20000}, timeout=60)
            cancel_id = big.json()["id"]
    with capsys.disabled():
        print(f"\n[examples] operations={len(operations())} requests={sent} failures={len(failures)}")
    assert not failures, "\n".join(failures)


def test_the_document_links_job_ids_to_the_submit_answer():
    for path in ("/v1/jobs", "/v1/jobs/upload"):
        links = DOCUMENT["paths"][path]["post"]["responses"]["202"]["links"]
        assert {link["operationId"] for link in links.values()} == set(JOB_OPERATIONS)
        assert all(link["parameters"] == {"job_id": "$response.body#/id"} for link in links.values())
