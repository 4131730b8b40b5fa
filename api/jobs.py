"""Background jobs over HTTP: ``/v1/jobs`` submit, status, result, cancel.

Thin: validation and HTTP shaping here, everything else in ``jobs.service``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, redirect, request, send_file, url_for
from flask_pydantic_spec import MultipartFormRequest, Response
from werkzeug.routing import BaseConverter

from api.context import services
from api.schemas import ErrorResponse, JobRequest, JobStatus, JobUploadForm
from api.spec import spec
from jobs.records import ON_ERROR_FAIL, SUCCEEDED, Created, Job
from jobs.results import FILE_NAME, media_type
from jobs.service import JobService, backend_call, build_service
from jobs.uploads import read_inputs
from serving.errors import FileNotFound, InvalidInput, UnsupportedMediaType, invalid
from serving.settings import Settings

JOBS_EXTENSION = "serve_http.jobs"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

jobs = Blueprint("jobs", __name__)


class FileNameConverter(BaseConverter):
    """A job's file name: its input's index in 8 digits and a suffix (``00000000.png``)."""

    regex = FILE_NAME.pattern

    def to_python(self, value):
        return value

    to_python.__annotations__["return"] = str


class JobIdConverter(BaseConverter):
    """A job id is 32 hex digits: ``/v1/jobs/upload`` is never read as a job id,
    so its ``Allow`` header lists only its own methods."""

    regex = "[0-9a-f]{32}"

    def to_python(self, value):
        return value

    # A real class, not a string: flask-pydantic-spec calls issubclass() on it.
    to_python.__annotations__["return"] = str


def init_jobs(app: Flask, settings: Settings) -> None:
    """Give the app its job service (nothing connects yet) and the routes."""
    app.extensions[JOBS_EXTENSION] = build_service(settings)
    app.url_map.converters["job_id"] = JobIdConverter
    app.url_map.converters["file_name"] = FileNameConverter
    app.register_blueprint(jobs)


def job_service() -> JobService:
    return current_app.extensions[JOBS_EXTENSION]


def _errors(*codes: int) -> dict:
    return {f"HTTP_{code}": ErrorResponse for code in codes}


def iso_time(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def percent(job: Job) -> int:
    """How far the job is, in whole percent: by steps where the model counts them, else by inputs."""
    if job.status == SUCCEEDED:
        return 100
    done, total = (job.steps_done, job.steps_total) if job.steps_total else (job.done, job.total)
    return min(99, done * 100 // total) if total else 0


def job_json(job: Job) -> dict:
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    steps = job.steps_total > 0
    return {
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "progress": {
            "done": job.done,
            "total": job.total,
            "steps_done": job.steps_done if steps else None,
            "steps_total": job.steps_total if steps else None,
            "percent": percent(job),
        },
        "shards": {"total": job.shards, "done": job.shards_done, "size": job.shard_size or job.total},
        "on_error": job.on_error,
        "inputs_uri": job.inputs_uri,
        "attempts": job.attempt,
        "computed": job.computed,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "finished_at": iso_time(job.finished_at),
        "heartbeat_at": iso_time(job.heartbeat_at),
        "error": error,
        "result_url": url_for("jobs.job_result", job_id=job.id) if job.status == SUCCEEDED else None,
    }


@jobs.post("/v1/jobs")
@spec.validate(
    body=JobRequest,
    resp=Response(HTTP_202=JobStatus, HTTP_200=JobStatus, validate=False, **_errors(400, 401, 404, 409, 413, 415, 422, 503)),
    tags=["jobs"],
)
def submit_job():
    """Run many inputs through a model in the background.

    Answers 202 with the job and its `Location`; poll it, then fetch
    `/v1/jobs/{id}/result`. With an `Idempotency-Key` header, a retried POST
    returns the first job (200, `Idempotent-Replayed: true`); the same key with
    another body is a 409.

    503 `no_job_worker` (nothing created) when no job worker has been alive
    for `SERVE_JOB_WORKER_GRACE_S`: start one (`make worker`); 503
    `job_backend_volatile` when the job backend is a Redis without
    persistence; 503 `not_ready` when it does not answer.
    """
    body: JobRequest = request.context.body
    if body.inputs_uri is not None:
        if body.inputs is not None:
            raise invalid("inputs_uri", "send either inputs (a list) or inputs_uri (where to read them), not both")
        return _submit(body.model, body.inputs_uri, body.parameters, body.shard_size, body.on_error)
    if body.inputs is None:
        raise invalid("inputs", "send the inputs (a list), or inputs_uri (where to read them)")
    return _submit(body.model, body.inputs, body.parameters, body.shard_size, body.on_error)


@jobs.before_request
def refuse_json_parts() -> None:
    # The spec validator json-loads any multipart part labelled JSON, before
    # the view runs; a JSON-lines file so labelled would fail there.
    if request.endpoint == "jobs.upload_job" and any(
        part.mimetype == "application/json" for part in request.files.values()
    ):
        raise UnsupportedMediaType(
            "send the inputs file as application/x-ndjson, application/zip or application/octet-stream",
            details={"field": "inputs"},
        )


@jobs.post("/v1/jobs/upload")
@spec.validate(
    body=MultipartFormRequest(model=JobUploadForm, file_key="inputs"),
    resp=Response(HTTP_202=JobStatus, HTTP_200=JobStatus, validate=False, **_errors(400, 401, 404, 409, 413, 415, 422, 503)),
    tags=["jobs"],
)
def upload_job():
    """Submit a job with its inputs in a file (multipart form).

    Fields: `model`, optional `parameters` (a JSON object: the task's request
    parameters), and the file `inputs`: JSON lines (one input per line, as the
    predict route takes it: a JSON string, a record ...; `{"text": ...}` and
    `{"image": ...}` lines are read as their value) or, for image models, a zip
    of images (its files in name order; result `index` i is the i-th name).
    Answers as `POST /v1/jobs`.
    """
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType("send the form as multipart/form-data", details={"field": "inputs"})
    form: JobUploadForm = request.context.body
    upload = request.files.get("inputs")
    if upload is None:
        raise InvalidInput("multipart field 'inputs' (the file) is missing", details={"field": "inputs"})
    settings = services().settings
    _, task = services().predictor.model(form.model)
    inputs = read_inputs(upload.read(), task, settings.job_max_inputs, settings.max_image_bytes)
    return _submit(form.model, inputs, form.parameters)


def _submit(model: str, inputs: list[Any] | str, parameters: dict[str, Any], shard_size: int | None = None,
            on_error: str = ON_ERROR_FAIL):
    outcome = submit_inputs(model, inputs, parameters, shard_size=shard_size, on_error=on_error)
    response = jsonify(job_json(outcome.job))
    response.status_code = 202 if outcome.created else 200
    response.headers["Location"] = url_for("jobs.get_job", job_id=outcome.job.id)
    if not outcome.created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def submit_inputs(model: str, inputs: list[Any] | str, parameters: dict[str, Any],
                  summary: dict[str, Any] | None = None, shard_size: int | None = None,
                  on_error: str = ON_ERROR_FAIL) -> Created:
    """Check a job's inputs as far as they can be checked here, then queue it
    (the request's ``Idempotency-Key`` honoured); ``inputs``: the inputs, or
    where to read them (``jobs/sources.py``: read once here, streaming);
    ``summary``: what a route shows of the request later (``Job.summary``)."""
    settings = services().settings
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise invalid(IDEMPOTENCY_HEADER, "Idempotency-Key must be 1 to 255 visible ASCII characters")
    predictor = services().predictor
    _, task = predictor.model(model)
    params = task.parameters(parameters)
    # A file per input (an image) is saved, and shown, as soon as it is made: one input per shard.
    files = task.file_suffix is not None
    size = 1 if files else shard_size or settings.job_shard_size
    if isinstance(inputs, str):
        with backend_call("input storage"):
            indexed = job_service().sources.index(
                inputs, task, params, predictor.limits, size, settings.job_max_inputs
            )
        return job_service().submit(
            model, indexed, params.model_dump(exclude_defaults=True), idempotency_key=key,
            batch_size=1 if files else None, on_error=on_error, steps_total=indexed.steps_total, summary=summary,
        )
    if len(inputs) > settings.job_max_inputs:
        raise invalid("inputs", f"at most {settings.job_max_inputs} inputs per job, got {len(inputs)}")
    # Refused now rather than failed later: the parameters, and every input as
    # far as it can be checked without the model (images are decoded by the worker).
    for i, item in enumerate(inputs):
        task.check(item, params, predictor.limits, f"inputs[{i}]")
    return job_service().submit(
        model, inputs, params.model_dump(exclude_defaults=True), idempotency_key=key,
        batch_size=1 if files else None, shard_size=size, on_error=on_error,
        steps_total=sum(task.steps(item, params, predictor.limits) for item in inputs),
        summary=summary,
    )


@jobs.get("/v1/jobs/<job_id:job_id>")
@spec.validate(resp=Response(HTTP_200=JobStatus, validate=False, **_errors(401, 404, 410, 503)), tags=["jobs"])
def get_job(job_id: str):
    """A job's status, progress (inputs done / total), timestamps and error.

    410 `job_lost`: the job existed, but the job backend lost its record (a
    Redis restarted without persistence); submit it again. 404: no such job
    (or a lost one whose saved results the job sweep already deleted).
    """
    return jsonify(job_json(job_service().get(job_id)))


@jobs.get("/v1/jobs/<job_id:job_id>/result")
@spec.validate(resp=Response("HTTP_200", "HTTP_307", validate=False, **_errors(401, 404, 409, 410, 503)), tags=["jobs"])
def job_result(job_id: str):
    """A succeeded job's results, as JSON lines.

    One line per input, in order: `{"index": i, "output": ...}` (the predict
    route's output) or `{"index": i, "error": {code, message}}` for an
    unreadable input.

    When results live in object storage, a 307 redirect to a pre-signed URL.
    409 until the job succeeded.
    """
    location = job_service().result(job_id)
    if location.url is not None:
        return redirect(location.url, code=307)
    assert location.path is not None
    return send_file(location.path, mimetype="application/x-ndjson", download_name=f"{job_id}.jsonl", conditional=True)


@jobs.get("/v1/jobs/<job_id:job_id>/files/<file_name:name>")
@spec.validate(resp=Response("HTTP_200", "HTTP_307", validate=False, **_errors(401, 404, 410, 503)), tags=["jobs"])
def job_file(job_id: str, name: str):
    """One of a job's files: a text-to-image job's PNG of one input.

    `00000000.png` is input 0's, as its result line's `file` names it.

    A file can be fetched as soon as it is made, before the job ends; when
    files live in object storage, a 307 redirect to a pre-signed URL. 404
    `file_not_found` until it is made (and after the job was cancelled).
    """
    service = job_service()
    location = service.file(service.get(job_id), name)
    if location is None:
        raise FileNotFound(f"job {job_id} has no file {name!r} (yet)", details={"file": name})
    if location.url is not None:
        return redirect(location.url, code=307)
    assert location.path is not None
    return send_file(location.path, mimetype=media_type(name), download_name=name, conditional=True)


@jobs.delete("/v1/jobs/<job_id:job_id>")
@spec.validate(resp=Response(HTTP_200=JobStatus, validate=False, **_errors(401, 404, 409, 410, 503)), tags=["jobs"])
def cancel_job(job_id: str):
    """Cancel a queued or running job.

    A running job stops after its current batch; 409 if it already succeeded
    or failed.
    """
    return jsonify(job_json(job_service().cancel(job_id)))
