"""The HTTP layer: ``create_app(settings)`` and the WSGI ``app`` Gunicorn serves.

Thin by design: request ids, authentication, content-type and JSON checks, and
the one table that maps the service's errors to HTTP statuses. Routes live in
``api/``; models in ``predict.py``.

``gunicorn -c gunicorn.conf.py serve_http:app`` builds the app (and loads the
models) in the master when ``app`` is first read; importing this module loads
nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from flask import Flask, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.wrappers import Request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.access import install_auth, install_cors
from api.compat import compat
from api.context import EXTENSION, Services
from api.demo import demo
from api.embeddings import embeddings
from api.forecast import init_forecast
from api.docs import docs
from api.v2 import v2
from api.metrics import UNMATCHED, metrics_blueprint, request_route
from api.generated_images import generated_images
from api.jobs import init_jobs
from api.routes import v1
from api.stream import stream
from api.spec import spec
from predict import ModelRegistry, Predictor
from serving.cache import build_cache
from serving.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    JobLost,
    ModelLoadError,
    ModelNotFound,
    NotAvailableYet,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServeError,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamFailed,
    ValidationFailed,
    WrongTask,
    error_body,
)
from serving import metrics, tracing
from serving.exemplars import EXEMPLARS
from serving.logs import ENV_MODEL, ENV_ROUTE, ENV_TRACE_ID, REQUEST_ID, request_id_for
from serving.schedule import Schedule
from serving.settings import Settings, load_settings
from tasks import Limits

log = logging.getLogger("serve_http")

# The one place errors become HTTP statuses; subclasses inherit their parent's.
STATUS: dict[type[ServeError], int] = {
    InvalidInput: 400,
    NotAvailableYet: 400,
    Unauthorized: 401,
    NotFound: 404,
    ModelNotFound: 404,
    Conflict: 409,
    JobLost: 410,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    ValidationFailed: 422,
    WrongTask: 422,
    UpstreamFailed: 502,
    NotReady: 503,
    Overloaded: 503,
    DeadlineExceeded: 504,
}



# Request bodies of this API nest five levels at most; orjson's own bound is
# 1024, deeper than orjson (254) or the validator can serialise back (a 500).
MAX_JSON_DEPTH = 32


class JsonTooDeep(ValueError):
    pass


def _check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit``; iterative, so depth cannot hurt it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise JsonTooDeep(f"request body nests deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


class OrjsonProvider(DefaultJSONProvider):
    """orjson for speed and strictness: NaN/Infinity, invalid UTF-8 and nesting
    deeper than ``MAX_JSON_DEPTH`` levels are parse errors (400), never a crash."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        value = orjson.loads(s)
        _check_depth(value)
        return value


class ApiRequest(Request):
    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if isinstance(e, JsonTooDeep):
            raise InvalidInput(str(e), details={"limit": MAX_JSON_DEPTH})
        raise InvalidInput("request body is not valid JSON")


def _body_type(view: Any) -> str | None:
    """The media type of the body a route validates, or None (flask-pydantic-spec
    stores the model class itself, or a Request wrapper with its content type)."""
    body = getattr(view, "body", None)
    if body is None:
        return None
    return getattr(body, "content_type", "application/json")


def status_of(error: ServeError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str, details: Any = None):
    response = jsonify(error_body(code, message, details, getattr(g, "request_id", "")))
    response.status_code = status
    return response


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> Flask:
    """Build the app; loads every model of the repository unless a registry is given."""
    settings = settings or load_settings()
    if registry is None:
        registry = ModelRegistry(settings.model_repository, settings.models)
        registry.load_all()

    app = Flask(__name__)
    app.request_class = ApiRequest
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Multipart parts live in memory up to the body limit; no temp files.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes

    cache = build_cache(
        settings.cache_backend,
        settings.cache_dir,
        settings.cache_max_bytes,
        settings.cache_max_items,
        # The job worker prunes the disk cache on its schedule (jobs/periodic.py).
        cull_on_write=Schedule.parse(settings.schedule_cache_prune).kind == "off",
    )
    app.extensions[EXTENSION] = Services(
        settings=settings,
        registry=registry,
        predictor=Predictor(
            registry,
            cache,
            batching=settings.batching,
            timeout=settings.inference_timeout_ms / 1000,
            limits=Limits.from_settings(settings),
        ),
    )

    app.register_blueprint(v1)
    app.register_blueprint(compat)
    app.register_blueprint(docs)
    app.register_blueprint(v2)
    app.register_blueprint(embeddings)
    app.register_blueprint(metrics_blueprint)
    app.register_blueprint(stream)
    app.register_blueprint(demo)
    app.register_blueprint(generated_images)
    init_jobs(app, settings)
    init_forecast(app, settings)
    spec.register(app, register_route=False)
    metrics.record_models(registry, registry.load_seconds)

    _install_hooks(app, settings)
    _install_error_handlers(app)
    return app


def _install_hooks(app: Flask, settings: Settings) -> None:
    # First hook: every request is counted and carries an id, even one that a
    # later hook refuses (401, 415). Then: key, CORS, body.
    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_for(request.headers.get("X-Request-ID", ""))
        g.request_id_token = REQUEST_ID.set(g.request_id)
        # The template, not the path: /v1/models/{name}/predict is one series.
        g.route = request_route()
        request.environ[ENV_ROUTE] = g.route
        g.in_progress = metrics.IN_PROGRESS.labels(g.route)
        g.in_progress.inc()
        if tracing.ENABLED:
            g.span, g.span_token, request.environ[ENV_TRACE_ID] = tracing.begin_request(
                request.headers, request.method, g.route, request.path, g.request_id
            )

    install_auth(app, settings)
    install_cors(app, settings)

    @app.before_request
    def parse_json_body() -> None:
        view = app.view_functions.get(request.endpoint or "")
        expected = _body_type(view)
        # A CORS preflight has no body; Flask answers it without the view.
        if request.method == "OPTIONS" or expected is None:
            return
        # Before the validator sees the body: it cannot report on bytes of
        # another type (it would fail serialising them into its error).
        if request.mimetype != expected:
            raise UnsupportedMediaType(
                f"send the body as {expected}", details={"content_type": request.mimetype or None}
            )
        if expected == "application/json":
            # Parse now, strictly; the validator then reads the cached result.
            request.get_json()

    @app.after_request
    def finish_request(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = g.get("route")
        if route is not None:
            metrics.REQUESTS.labels(route, request.method, f"{response.status_code // 100}xx").inc()
            seconds = time.perf_counter() - g.started
            metrics.REQUEST_DURATION.labels(route, request.method).observe(seconds)
            span = g.get("span")
            if span is not None:
                g.status = response.status_code
                if span.is_recording():
                    EXEMPLARS.observe(metrics.REQUEST_DURATION, (route, request.method), seconds, span.get_span_context())
        return response

    @app.teardown_request
    def end_request(error: BaseException | None) -> None:
        in_progress = g.get("in_progress")
        if in_progress is not None:
            in_progress.dec()
        span = g.get("span")
        if span is not None:
            g.span = None
            tracing.end_request(span, g.span_token, g.get("status"), request.environ.get(ENV_MODEL), error)
        token = g.get("request_id_token")
        if token is not None:
            try:
                REQUEST_ID.reset(token)
            except ValueError:  # torn down in another context: nothing to restore
                pass


def render_error(error: BaseException):
    """The JSON answer to any error raised while handling a request: the
    service's own errors by the status table, Werkzeug's HTTP errors as
    themselves, anything else as a 500 whose traceback goes to the log only."""
    if isinstance(error, ServeError):
        status = status_of(error)
        response = error_response(status, error.code, error.message, error.details)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="serve-http"'
        if status == 503:
            response.headers["Retry-After"] = "1" if isinstance(error, Overloaded) else "5"
            metrics.REJECTED.labels(g.get("route", UNMATCHED), error.code).inc()
        return response
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        return error_response(413, "payload_too_large", f"request body is larger than {limit} bytes", {"limit": limit})
    if isinstance(error, HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        allowed = getattr(error, "valid_methods", None) if error.code == 405 else None
        details = {"allowed": allowed} if allowed else None
        response = error_response(error.code or 500, code, error.description or error.name, details)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response
    log.exception("unhandled error on %s %s", request.method, g.get("route", request.path), exc_info=error)
    return error_response(500, "internal_error", "internal server error")


def _install_error_handlers(app: Flask) -> None:
    # One function for all: Flask picks a handler by the error's class, so each
    # family is registered (a handler for Exception alone would not see ServeError).
    for family in (ServeError, RequestEntityTooLarge, HTTPException, Exception):
        app.register_error_handler(family, render_error)


def __getattr__(name: str) -> Any:
    # PEP 562: `serve_http:app` is built on first access, so tests and tools can
    # import this module without loading any model.
    if name == "app":
        try:
            application = create_app()
        except ModelLoadError as exc:
            # One line naming the model, not a traceback: a log record, so it
            # is JSON like every other line when the logs are.
            log.critical("serve-http: cannot start: %s", exc)
            raise SystemExit(1) from None
        globals()["app"] = application
        return application
    raise AttributeError(name)
