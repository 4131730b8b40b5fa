"""One small error hierarchy for the whole service.

The model layer and the codecs raise these; ``serve_http`` maps each class to an
HTTP status in one table. Messages are written for the client: they never carry
a traceback or internal paths.

Every error's ``details`` has one shape: a list (empty when there is nothing
to add) of objects, each ``{"field", "message", "type", ...}`` as pydantic
reports a validation problem: ``field`` the path of the input it is about
(``null`` when it is about no one field), ``message`` for a person, ``type`` a
stable name to branch on, and any further keys the values it carries
(``limit``, ``available`` ...).
"""

from __future__ import annotations

from typing import Any

Detail = dict[str, Any]


def error_details(details: Any, message: str, code: str) -> list[Detail]:
    """``details`` in the one shape. ``None`` is no entry; a dict is one entry
    about the error itself (its message and type, unless it names its own);
    a list keeps its entries, each filled out the same way."""
    if details is None:
        return []
    entries = [details] if isinstance(details, dict) else list(details)
    return [
        {"field": None, "message": message, "type": code, **entry}
        if isinstance(entry, dict)
        else {"field": None, "message": str(entry), "type": code}
        for entry in entries
    ]


class ServeError(Exception):
    """Base of every error the service reports to a client.

    ``details`` may be given as one dict or a list of them
    (see :func:`error_details`); it is kept in the one shape, a list.
    """

    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = error_details(details, message, self.code)


class InvalidInput(ServeError):
    """The input is malformed: bad base64, not an image, bad JSON."""

    code = "invalid_input"


class UnsupportedFormat(InvalidInput):
    """The input is an image, but of a format outside the allow-list."""

    code = "unsupported_format"


class ValidationFailed(ServeError):
    """The request parsed but its fields break the schema (details name the field path)."""

    code = "validation_failed"


class Unauthorized(ServeError):
    code = "unauthorized"


class NotFound(ServeError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class WrongTask(ServeError):
    """A model was asked to do what its task is not (e.g. detect with a classifier)."""

    code = "wrong_task"


class JobsOnly(WrongTask):
    """A model that runs only as a background job (text to image) was asked
    for a synchronous answer: submit it to ``POST /v1/jobs`` (422)."""

    code = "jobs_only"


class JobNotFound(NotFound):
    code = "job_not_found"


class NotAvailableYet(ServeError):
    """What was asked for is not made yet (the book's image URL before the image exists: 400)."""

    code = "not_available_yet"


class FileNotFound(NotFound):
    """A job holds no file of that name (not written yet, or the job was cancelled)."""

    code = "file_not_found"


class JobLost(ServeError):
    """The job existed (result storage still holds its trace) but its record is
    gone: the job backend lost it (410, not 404: asking again will not help)."""

    code = "job_lost"


class Conflict(ServeError):
    """The request clashes with the resource's current state (409)."""

    code = "conflict"


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused with a different request body."""

    code = "idempotency_conflict"


class JobNotFinished(Conflict):
    """A job's result was asked for before it succeeded, or a finished job was cancelled."""

    code = "job_not_finished"


class PayloadTooLarge(ServeError):
    code = "payload_too_large"


class UnsupportedMediaType(ServeError):
    code = "unsupported_media_type"


class NotReady(ServeError):
    """A model is not loaded (yet, or it failed to load)."""

    code = "not_ready"


class NoJobWorker(NotReady):
    """No job worker has been alive for ``SERVE_JOB_WORKER_GRACE_S``: a job would wait for ever."""

    code = "no_job_worker"


class JobBackendVolatile(NotReady):
    """The job backend (a Redis without persistence) would lose every job on a restart."""

    code = "job_backend_volatile"


class Overloaded(ServeError):
    """A model's queue is full: the client should retry later (503 + Retry-After)."""

    code = "overloaded"


class DeadlineExceeded(ServeError):
    """The inference did not finish within the request's deadline (504)."""

    code = "deadline_exceeded"


class UpstreamFailed(ServeError):
    """A service this one called (an ensemble's remote member) failed or answered wrongly (502)."""

    code = "upstream_failed"


class LoadFailed(InvalidInput):
    """A model folder asked to load (live) does not load; the old version keeps serving."""

    code = "load_failed"


class ModelLoadError(Exception):
    """A model folder cannot be loaded; raised at start-up, never to a client."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r}: {reason}")
        self.model = model
        self.reason = reason


class StreamingUnavailable(NotReady):
    """This worker class cannot hold a WebSocket (Gunicorn's sync worker)."""

    code = "streaming_unavailable"


class CacheUnavailable(NotReady):
    """The prediction cache cannot be used now (predictions go on uncached); it is retried."""

    code = "cache_unavailable"


def invalid(field: str, message: str, kind: str = "value_error") -> ValidationFailed:
    """A 422 naming one field, in the shape pydantic errors are reported."""
    return ValidationFailed(message, details=[{"field": field, "message": message, "type": kind}])


def error_body(code: str, message: str, details: Any, request_id: str) -> dict[str, Any]:
    """The one JSON shape of every error answer, ``details`` a list (:func:`error_details`)."""
    details = error_details(details, message, code)
    return {"error": {"code": code, "message": message, "details": details, "request_id": request_id}}
