"""The text-to-image routes of the FastAPI book (chapter 14), unchanged for its
clients and backed by background jobs.

``POST /generated-images`` makes a row (201): a job of one input on the
``SERVE_IMAGE_GENERATION_MODEL``, whose ``id`` is the job's submission number
(1, 2, ...), as the book's database numbers its rows. ``GET
/generated-images/{id}`` shows the row, ``progress`` in whole percent of the
denoising steps; ``GET /generated-images/{id}/url`` answers 400 until the
image is stored, then its URL (pre-signed where results live in object
storage). ``POST /image-generation`` is the book's simpler route: 202
``{"task_id"}``.

Thin: every job rule (checks, idempotency, 503 without a worker) is
``api.jobs``'s, and a row is a view of the job's record.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request, url_for

from api.context import services
from api.jobs import iso_time, job_service, percent, submit_inputs
from api.schemas import GeneratedImageRead, ImageGenerationInput, ImageGenerationOutput, ImageURL
from api.spec import responses, spec
from jobs.records import FINISHED, SUCCEEDED, Job
from jobs.results import file_name
from serving.errors import JobNotFound, NotAvailableYet
from tasks import TEXT_TO_IMAGE
from tasks.generation import TextToImage

generated_images = Blueprint("generated_images", __name__)

#: The book's words, as its clients show them.
NOT_YET = "Image is not available yet. Please try again later."
#: The route part of a row id: 1 and up, within SQLite's integers (a larger one is a 404).
ROW_ID = "<int(min=1, max=9223372036854775807):image_id>"
#: The one image of a row's job.
IMAGE = file_name(0, TextToImage.file_suffix)


def image_job(image_id: int) -> Job:
    """The job of image row ``image_id``; 404 unless one of these routes made it
    (another job's number is not an image row)."""
    job = job_service().by_number(image_id)
    if job.summary is None:
        raise JobNotFound(f"no generated image {image_id}")
    return job


def row(job: Job) -> dict[str, Any]:
    """A job as the book's ``GeneratedImageRead``."""
    summary = job.summary or {}
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return {
        "id": job.number,
        "created_at": iso_time(job.created_at),
        "progress": percent(job),
        "prompt": summary.get("prompt", ""),
        "negative_prompt": summary.get("negative_prompt"),
        "num_steps": summary.get("num_steps", job.steps_total),
        "file_name": f"{job.id}/files/{IMAGE}" if job.status == SUCCEEDED else None,
        "job_id": job.id,
        "status": job.status,
        "error": error,
    }


def _submit(body: ImageGenerationInput):
    """One input on the image generation model; the job's outcome."""
    name = services().settings.image_generation_model
    predictor = services().predictor
    _, task = predictor.model(name, task=TEXT_TO_IMAGE)
    item = body.model_dump(exclude_none=True)
    # Checked here first, so that a 422 names the body's field (width), not the job's (inputs[0].width).
    drawn = task.decode(item, task.parameters(None), predictor.limits, "").value
    summary = {"prompt": body.prompt, "negative_prompt": body.negative_prompt, "num_steps": drawn.num_steps}
    return submit_inputs(name, [item], {}, summary=summary)


@generated_images.post("/generated-images")
@spec.validate(
    body=ImageGenerationInput,
    resp=responses(GeneratedImageRead, 400, 404, 409, 413, 415, 422, 503, status=201),
    tags=["text to image"],
)
def create_generated_image():
    """The book's `POST /generated-images`: a row for a new image (201).

    The image is drawn by a job worker; follow `progress` with
    `GET /generated-images/{id}`, then get the file from `.../url`.
    """
    outcome = _submit(request.context.body)
    response = jsonify(row(outcome.job))
    response.status_code = 201 if outcome.created else 200
    response.headers["Location"] = url_for("generated_images.get_generated_image", image_id=outcome.job.number)
    return response


@generated_images.get(f"/generated-images/{ROW_ID}")
@spec.validate(resp=responses(GeneratedImageRead, 404, 503), tags=["text to image"])
def get_generated_image(image_id: int):
    """The book's `GET /generated-images/{id}`: the row, `progress` rising to 100."""
    return jsonify(row(image_job(image_id)))


@generated_images.get(f"/generated-images/{ROW_ID}/url")
@spec.validate(resp=responses(ImageURL, 400, 404, 503), tags=["text to image"])
def get_generated_image_url(image_id: int):
    """The book's `GET /generated-images/{id}/url`: the image's URL, or 400 until it is stored.

    `{"url"}` once the image is stored; until then 400 "Image is not available
    yet. Please try again later." (or why it never will be: the job failed or
    was cancelled).

    A pre-signed URL where results live in object storage; else this server's
    `/v1/jobs/{job_id}/files/00000000.png`.
    """
    job = image_job(image_id)
    location = job_service().file(job, IMAGE)
    if location is None:
        if job.status in FINISHED:
            reason = f": {job.error_message}" if job.error_message else ""
            raise NotAvailableYet(f"The image will not be available: its job was {job.status}{reason}",
                                  details={"status": job.status, "job_id": job.id})
        raise NotAvailableYet(NOT_YET, details={"status": job.status, "progress": percent(job)})
    url = location.url or url_for("jobs.job_file", job_id=job.id, name=IMAGE, _external=True)
    return jsonify(url=url)


@generated_images.post("/image-generation")
@spec.validate(
    body=ImageGenerationInput,
    resp=responses(ImageGenerationOutput, 400, 404, 409, 413, 415, 422, 503, status=202),
    tags=["text to image"],
)
def image_generation():
    """The book's `POST /image-generation`: 202 with the job's id as `task_id`.

    `GET /v1/jobs/{task_id}` follows the job; its result line names the
    image's file.
    """
    outcome = _submit(request.context.body)
    response = jsonify(task_id=outcome.job.id)
    response.status_code = 202 if outcome.created else 200
    response.headers["Location"] = url_for("jobs.get_job", job_id=outcome.job.id)
    return response
