"""The jobs routes through the Flask test client; the job runs in-process
through the same JobRunner a worker process uses."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from api.jobs import JOBS_EXTENSION
from jobs.runner import JobRunner
from predict import Predictor
from serve_http import create_app
from tests.conftest import b64

TEXTS = ["a warm, funny, beautifully acted film", "a dull and lifeless mess", "the plot follows two brothers"]


@pytest.fixture
def app(settings, registry):
    settings.job_max_inputs = 5
    settings.job_batch_size = 2
    return create_app(settings, registry=registry)


def run_queued(app, registry, job_id: str) -> None:
    """What a worker process does with the queued job id."""
    backends = app.extensions[JOBS_EXTENSION].backends
    runner = JobRunner(backends.store, backends.results, Predictor(registry, batching=False),
                       heartbeat_s=5, requeue=backends.queue.enqueue)
    for shard in range(backends.store.get(job_id).shards):
        runner(job_id, shard)


def submit(client, body: dict, **headers):
    return client.post("/v1/jobs", json=body, headers=headers)


def test_a_job_is_queued_run_and_its_results_equal_the_predict_route(client, app, registry):
    r = submit(client, {"model": "sentiment", "inputs": TEXTS})
    assert r.status_code == 202
    job = r.get_json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": 3, "steps_done": None, "steps_total": None, "percent": 0} and job["result_url"] is None
    # Nothing consumes the queue in this test: the job waits, and so does its result.
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["status"] == "queued"
    early = client.get(f"/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "job_not_finished"

    run_queued(app, registry, job["id"])
    done = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert done["status"] == "succeeded" and done["progress"] == {"done": 3, "total": 3, "steps_done": None, "steps_total": None, "percent": 100}
    assert done["computed"] == 3 and done["attempts"] == 1
    assert done["result_url"] == f"/v1/jobs/{job['id']}/result"
    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in result.get_data(as_text=True).splitlines()]
    expected = client.post("/v1/models/sentiment/predict", json={"inputs": TEXTS}).get_json()["outputs"]
    assert lines == [{"index": i, "output": output} for i, output in enumerate(expected)]


def test_an_image_job_reports_an_unreadable_image_on_its_own_line(client, app, registry, astronaut_jpeg):
    r = submit(client, {"model": "faces", "inputs": [b64(astronaut_jpeg), "not base64!"],
                        "parameters": {"maxResults": 5}})
    assert r.status_code == 202
    job_id = r.get_json()["id"]
    run_queued(app, registry, job_id)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    first, second = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/result").get_data(as_text=True).splitlines()]
    assert len(first["output"]["objects"]) == 1 and first["output"]["objects"][0]["label"] == "face"
    assert second == {"index": 1, "error": {"code": "invalid_input", "message": "image content is not valid base64"}}


def test_idempotency_key_replays_the_job_and_refuses_another_body(client):
    first = submit(client, {"model": "sentiment", "inputs": TEXTS}, **{"Idempotency-Key": "order-42"})
    again = submit(client, {"model": "sentiment", "inputs": TEXTS}, **{"Idempotency-Key": "order-42"})
    other = submit(client, {"model": "sentiment", "inputs": TEXTS[:1]}, **{"Idempotency-Key": "order-42"})
    fresh = submit(client, {"model": "sentiment", "inputs": TEXTS})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_conflict"
    assert [d["job_id"] for d in other.get_json()["error"]["details"]] == [first.get_json()["id"]]
    assert fresh.get_json()["id"] != first.get_json()["id"]


def test_cancel_a_queued_job_then_a_finished_one_is_a_conflict(client, app, registry):
    job_id = submit(client, {"model": "sentiment", "inputs": TEXTS}).get_json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled" and r.get_json()["finished_at"]
    assert client.delete(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    run_queued(app, registry, job_id)  # a worker that gets the message skips it
    assert client.get(f"/v1/jobs/{job_id}").get_json()["progress"]["done"] == 0

    finished = submit(client, {"model": "sentiment", "inputs": TEXTS}).get_json()["id"]
    run_queued(app, registry, finished)
    r = client.delete(f"/v1/jobs/{finished}")
    assert r.status_code == 409 and [d["status"] for d in r.get_json()["error"]["details"]] == ["succeeded"]


@pytest.mark.parametrize(
    "body, status, code, field",
    [
        ({"model": "sentiment", "inputs": []}, 422, "validation_failed", "inputs"),
        ({"model": "sentiment"}, 422, "validation_failed", "inputs"),
        ({"model": "sentiment", "inputs": ["ok"], "colour": "red"}, 422, "validation_failed", "colour"),
        ({"model": "sentiment", "inputs": ["ok"] * 6}, 422, "validation_failed", "inputs"),
        ({"model": "sentiment", "inputs": ["ok", "   "]}, 422, "validation_failed", "inputs[1]"),
        ({"model": "sentiment", "inputs": [3]}, 422, "validation_failed", "inputs[0]"),
        ({"model": "nope", "inputs": ["ok"]}, 404, "model_not_found", None),
    ],
)
def test_bad_submissions_get_a_clear_error_and_make_no_job(client, app, body, status, code, field):
    r = submit(client, body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == code
    if field:
        assert field in [d["field"] for d in error["details"]]
    store = app.extensions[JOBS_EXTENSION].store
    assert not store.path.exists() or store._conn.execute("select count(*) from jobs").fetchone()[0] == 0


def test_bad_headers_content_type_and_ids(client):
    r = submit(client, {"model": "sentiment", "inputs": ["ok"]}, **{"Idempotency-Key": "x" * 300})
    assert r.status_code == 422 and r.get_json()["error"]["details"][0]["field"] == "Idempotency-Key"
    r = client.post("/v1/jobs", data="model=sentiment", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    r = client.post("/v1/jobs", data="{not json", content_type="application/json")
    assert r.status_code == 400
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/../../etc", "/v1/jobs/x/result"):
        r = client.get(path)
        assert r.status_code == 404, path
    missing = client.delete("/v1/jobs/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "job_not_found"
    assert client.put("/v1/jobs").status_code == 405


def test_jobs_routes_need_the_api_key_when_keys_are_set(settings, registry):
    settings.api_keys = ["secret"]
    client = create_app(settings, registry=registry).test_client()
    assert client.post("/v1/jobs", json={"model": "sentiment", "inputs": ["ok"]}).status_code == 401
    assert client.get("/v1/jobs/0123456789abcdef0123456789abcdef").status_code == 401
    r = client.post("/v1/jobs", json={"model": "sentiment", "inputs": ["ok"]}, headers={"X-Api-Token": "secret"})
    assert r.status_code == 202


def upload(client, data: bytes, filename: str, content_type: str = "application/octet-stream", **fields):
    form = {"inputs": (io.BytesIO(data), filename, content_type), **fields}
    return client.post("/v1/jobs/upload", data=form, content_type="multipart/form-data")


def results_of(client, job_id: str) -> list[dict]:
    return [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/result").get_data(as_text=True).splitlines()]


def test_upload_json_lines_of_texts(client, app, registry):
    lines = [json.dumps(TEXTS[0]), "", json.dumps({"text": TEXTS[1]}), json.dumps(TEXTS[2])]
    r = upload(client, "\n".join(lines).encode(), "reviews.jsonl", model="sentiment")
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["progress"]["total"] == 3 and r.headers["Location"] == f"/v1/jobs/{job['id']}"
    run_queued(app, registry, job["id"])
    expected = client.post("/v1/models/sentiment/predict", json={"inputs": TEXTS}).get_json()["outputs"]
    assert [line["output"] for line in results_of(client, job["id"])] == expected


def test_upload_a_zip_of_images_in_name_order(client, app, registry, astronaut_jpeg, chelsea_jpeg):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("b-cat.jpg", chelsea_jpeg)
        archive.writestr("a-astronaut.jpg", astronaut_jpeg)
        archive.writestr("photos/", b"")
        archive.writestr(".DS_Store", b"junk")
    r = upload(client, buffer.getvalue(), "photos.zip", "application/zip", model="faces",
               parameters='{"maxResults": 3}')
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    assert r.get_json()["progress"]["total"] == 2
    run_queued(app, registry, job_id)
    astronaut, cat = results_of(client, job_id)
    assert astronaut["index"] == 0 and len(astronaut["output"]["objects"]) == 1
    assert (cat["output"]["width"], cat["output"]["height"]) == (451, 300)


@pytest.mark.parametrize(
    "data, fields, status, code",
    [
        (b'"fine"\n{"oops"\n', {"model": "sentiment"}, 422, "validation_failed"),
        (b'"fine"\n42\n', {"model": "sentiment"}, 422, "validation_failed"),
        (b"\n\n", {"model": "sentiment"}, 422, "validation_failed"),
        (b"\xff\xfe\x00", {"model": "sentiment"}, 400, "invalid_input"),
        (b"PK\x03\x04 not really a zip", {"model": "faces"}, 400, "invalid_input"),
        (b'"fine"\n', {"model": "nope"}, 404, "model_not_found"),
        (b'"fine"\n', {"model": "sentiment", "colour": "red"}, 422, "validation_failed"),
        (b'"fine"\n', {}, 422, "validation_failed"),
        (b'"fine"\n', {"model": "faces", "parameters": '{"maxResults": 0}'}, 422, "validation_failed"),
        (b'"fine"\n', {"model": "faces", "parameters": "{nope"}, 422, "validation_failed"),
        (b"\n".join([b'"x"'] * 6), {"model": "sentiment"}, 422, "validation_failed"),
    ],
)
def test_bad_uploads_get_a_clear_error(client, data, fields, status, code):
    r = upload(client, data, "inputs.jsonl", **fields)
    assert r.status_code == status, r.get_json()
    assert r.get_json()["error"]["code"] == code


def test_upload_refuses_a_zip_for_a_text_model_a_json_part_and_a_missing_file(client, astronaut_jpeg):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.jpg", astronaut_jpeg)
    r = upload(client, buffer.getvalue(), "a.zip", model="sentiment")
    assert r.status_code == 422 and "image model" in r.get_json()["error"]["message"]
    r = upload(client, b'"fine"\n', "inputs.json", "application/json", model="sentiment")
    assert r.status_code == 415
    r = client.post("/v1/jobs/upload", data={"model": "sentiment"}, content_type="multipart/form-data")
    assert r.status_code == 400 and [d["field"] for d in r.get_json()["error"]["details"]] == ["inputs"]
    r = client.post("/v1/jobs/upload", json={"model": "sentiment"})
    assert r.status_code == 415


def test_an_unreachable_redis_is_a_503_not_a_crash(settings, registry):
    from tests.e2e.server import free_port

    settings.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    client = create_app(settings, registry=registry).test_client()
    for r in (
        client.post("/v1/jobs", json={"model": "sentiment", "inputs": ["ok"]}),
        client.get("/v1/jobs/0123456789abcdef0123456789abcdef"),
        client.delete("/v1/jobs/0123456789abcdef0123456789abcdef"),
    ):
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.get_json()["error"]["code"] == "not_ready"
        assert "Traceback" not in r.get_data(as_text=True)


def test_hostile_multipart_fields_are_4xx_not_a_crash(client):
    """Found by the contract fuzzer: field names and values the validation library
    could not put into its own error (not UTF-8, integers beyond 64 bits)."""
    boundary = "b0undary"
    parts = [
        ('name="\xfd\xf5\xff"', b"0"),
        ('name="parameters"\r\nContent-Type: application/json', b'{"maxResults": 200000000000000000000000000}'),
        ('name="model"', b"sentiment"),
    ]
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode("utf-8", "surrogateescape") + value + b"\r\n"
        for head, value in parts
    ) + f"--{boundary}--\r\n".encode()
    r = client.post("/v1/jobs/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422, r.data
    assert {item["field"] for item in r.json["error"]["details"]} == {"\xfd\xf5\xff"}
    # Without the odd field name, the integer beyond 64 bits reaches the task's parameters.
    parts = [parts[1], ('name="model"', b"faces"), ('name="inputs"; filename="x.jsonl"', b'"AA=="')]
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + value + b"\r\n"
        for head, value in parts
    ) + f"--{boundary}--\r\n".encode()
    r = client.post("/v1/jobs/upload", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422, r.data
    assert [item["field"] for item in r.json["error"]["details"]] == ["parameters.maxResults"]
    assert client.post("/v1/jobs/upload", data=body, headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.fixture
def faulty(settings, tmp_path):
    """An app over sentiment and the faulty model (``boom`` raises in the model call)."""
    import shutil

    from predict import ModelRegistry
    from tests.faulty_adapter import write_faulty_model_folder

    root = tmp_path / "faulty-models"
    shutil.copytree(settings.model_repository / "sentiment", root / "sentiment")
    write_faulty_model_folder(root)
    registry = ModelRegistry(root)
    registry.load_all()
    settings.model_repository = root
    return create_app(settings, registry=registry), registry


def drain(app, registry, job_id: str, max_attempts: int) -> list[tuple[int, str]]:
    """Run the job's shards as worker processes would, retries included:
    (shard, its attempt's outcome log) in the order they ran."""
    backends = app.extensions[JOBS_EXTENSION].backends
    queue = [(job_id, shard) for shard in range(backends.store.get(job_id).shards)]
    runner = JobRunner(backends.store, backends.results, Predictor(registry, batching=False), heartbeat_s=5,
                       requeue=lambda *message: queue.append(message), max_attempts=max_attempts)
    ran = []
    while queue:
        message = queue.pop(0)
        runner(*message)
        ran.append(message[1])
    return ran


def test_a_shard_that_keeps_failing_is_retried_then_skipped_or_fails_the_job(faulty):
    app, registry = faulty
    client = app.test_client()
    inputs = ["a fine review", "boom goes the model", "a second fine one", "and a third"]
    skip = client.post("/v1/jobs", json={"model": "faulty", "inputs": inputs, "shard_size": 2, "on_error": "skip"})
    assert skip.status_code == 202 and skip.get_json()["shards"]["total"] == 2 and skip.get_json()["on_error"] == "skip"
    job_id = skip.get_json()["id"]
    assert drain(app, registry, job_id, max_attempts=2) == [0, 1, 0]  # shard 0 retried once, then skipped
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 2 and job["progress"]["done"] == 4
    lines = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/result").get_data(as_text=True).splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    for line in lines[:2]:  # the whole failed shard: one error line per input
        assert line["error"]["code"] == "internal_error"
        assert line["error"]["message"] == "the worker failed: RuntimeError (shard 0, 2 attempts)"
    assert [line["output"]["category"] for line in lines[2:]] == ["short", "short"]

    fail = client.post("/v1/jobs", json={"model": "faulty", "inputs": inputs, "shard_size": 2})
    job_id = fail.get_json()["id"]
    assert fail.get_json()["on_error"] == "fail"
    drain(app, registry, job_id, max_attempts=3)
    job = client.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["attempts"] == 3
    assert job["error"] == {"code": "internal_error", "message": "the worker failed: RuntimeError"}
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


@pytest.mark.parametrize("extra, field", [
    ({"shard_size": 0}, "shard_size"),
    ({"shard_size": 2.5}, "shard_size"),
    ({"on_error": "ignore"}, "on_error"),
    ({"inputs_uri": "/data/in.jsonl"}, "inputs_uri"),  # both inputs and inputs_uri
])
def test_bad_shard_options_are_refused(client, extra, field):
    r = submit(client, {"model": "sentiment", "inputs": ["ok"], **extra})
    assert r.status_code == 422, r.get_json()
    assert field in [d["field"] for d in r.get_json()["error"]["details"]]


def test_inputs_by_reference_are_refused_unless_allowed(client):
    r = submit(client, {"model": "sentiment", "inputs_uri": "s3://bucket/inputs.jsonl"})
    assert r.status_code == 422
    assert "SERVE_JOB_INPUT_URIS" in r.get_json()["error"]["message"]
