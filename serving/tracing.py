"""OpenTelemetry traces: off unless the standard ``OTEL_*`` variables ask for them.

Tracing is on in a process when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, or ``OTEL_TRACES_EXPORTER``
names ``otlp`` or ``console``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off. Everything else is the SDK's own
reading of the environment: ``OTEL_SERVICE_NAME`` (default ``serve-http``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its argument,
``OTEL_PROPAGATORS`` (W3C ``traceparent`` / ``tracestate`` and baggage),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``. Spans leave by OTLP/HTTP
(protobuf) from a background thread.

The tracer provider is made by :func:`start` after fork, in each process that
handles work (a Gunicorn worker's ``post_fork``, a job process's start-up),
never in a master whose children would inherit its exporter thread, and
:func:`stop` flushes it on a graceful stop.

Hot paths test the module flag ``ENABLED`` (or get :data:`NULL` from the
helpers), so with tracing off a request pays for no span, no context switch,
no id. Spans carry names, counts and sizes, never input data: no text, no
image bytes, no error message (a model's error may quote its input); an
error is its type (``error.type``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, Iterator, Mapping, MutableMapping, Sequence

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

ENABLED = False
#: What the helpers return while tracing is off: a context manager that yields None.
NULL = contextlib.nullcontext()

_tracer: trace.Tracer = trace.NoOpTracer()
_provider: Any = None
_EXPORTERS = ("otlp", "console")


def wanted(environ: Mapping[str, str] = os.environ) -> str | None:
    """The exporter the environment asks for (``otlp`` or ``console``), or None: off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        chosen = next((n for n in names if n in _EXPORTERS), None)
        if chosen is None and names != ["none"]:
            log.warning("OTEL_TRACES_EXPORTER=%s: only otlp (HTTP) and console are built in; traces are off", ",".join(names))
        return chosen
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def start(role: str, exporter: Any = None) -> bool:
    """Trace this process, as ``role`` (``web``, ``jobs``), if the environment
    asks for it or an ``exporter`` is given (tests: an in-memory one, exported
    synchronously). Call after fork. True if tracing is now on."""
    global ENABLED, _tracer, _provider
    kind = None if exporter is not None else wanted()
    if exporter is None and kind is None:
        return False
    if _provider is not None:
        stop()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create({"serve.role": role, "process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "serve-http"}))
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        if kind == "otlp":
            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != "http/protobuf":
                log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: spans are sent as http/protobuf", protocol)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        # User code in a model folder may ask the API for a tracer: it gets this one.
        trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("serve-http")
    ENABLED = True
    log.info("tracing on (%s): %s, pid %d", role, kind or type(exporter).__name__, os.getpid())
    return True


def stop() -> None:
    """Export what is buffered and stop tracing in this process."""
    global ENABLED, _tracer, _provider
    provider, _provider = _provider, None
    ENABLED = False
    _tracer = trace.NoOpTracer()
    if provider is not None:
        try:
            provider.shutdown()
        except Exception:  # a collector that is gone must not fail a shutdown
            log.warning("flushing traces failed", exc_info=True)


# --- spans -------------------------------------------------------------------------


def _failed(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


@contextlib.contextmanager
def _current(name: str, attributes: Mapping[str, Any], kind: SpanKind, parent: context.Context | None,
             links: Sequence[Link] = (), start_time: int | None = None) -> Iterator[Span]:
    span = _tracer.start_span(name, parent, kind, attributes, links, start_time)
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        yield span
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        context.detach(token)
        span.end()


def span(name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL):
    """A child of the current span for the ``with`` block; None while off, and
    under a span that is not recorded (an unsampled request's children would
    not be either: skipping them is what keeps a low sampler cheap)."""
    if not ENABLED or not trace.get_current_span().is_recording():
        return NULL
    return _current(name, attributes or {}, kind, None)


def continued(carrier: Mapping[str, str] | None, name: str, attributes: Mapping[str, Any] | None = None,
              kind: SpanKind = SpanKind.INTERNAL, start_time: float | None = None):
    """A span for the ``with`` block that continues the trace ``carrier``
    holds (a job record's ``traceparent``); None while off."""
    if not ENABLED:
        return NULL
    parent = propagate.extract(carrier or {})
    return _current(name, attributes or {}, kind, parent, start_time=_ns(start_time))


def interval(carrier: Mapping[str, str] | None, name: str, started: float, ended: float,
             attributes: Mapping[str, Any] | None = None) -> None:
    """A span already over (wall-clock seconds), in the trace ``carrier``
    holds, or under the current span when ``carrier`` is None."""
    if not ENABLED:
        return
    parent = propagate.extract(carrier) if carrier is not None else None
    _tracer.start_span(name, parent, attributes=attributes, start_time=_ns(started)).end(_ns(ended))


def _ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def carrier() -> dict[str, str]:
    """The current span as W3C headers (``traceparent``, ``tracestate``), to store or send on."""
    headers: dict[str, str] = {}
    inject(headers)
    return headers


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing headers."""
    if ENABLED:
        propagate.inject(headers)


def current() -> SpanContext | None:
    """The current span's context, or None while off or outside any span."""
    if not ENABLED:
        return None
    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


def recorded() -> SpanContext | None:
    """The current span's context if it is recorded (sampled), else None."""
    if not ENABLED:
        return None
    found = trace.get_current_span()
    return found.get_span_context() if found.is_recording() else None


def trace_id() -> str | None:
    """The current trace id in hex (sampled or not), or None."""
    found = current()
    return f"{found.trace_id:032x}" if found is not None else None


def exemplar(found: SpanContext | None = None) -> dict[str, str] | None:
    """A span (default: the current one) as an OpenMetrics exemplar's labels, if it is sampled."""
    found = found or current()
    if found is None or not found.trace_flags.sampled:
        return None
    return {"trace_id": f"{found.trace_id:032x}", "span_id": f"{found.span_id:016x}"}


# --- HTTP requests -----------------------------------------------------------------


def begin_request(headers: Mapping[str, str], method: str, route: str, path: str,
                  request_id: str) -> tuple[Span, object, str]:
    """The server span of one HTTP request, continuing the client's ``traceparent``,
    made current until :func:`end_request`; and its trace id (hex)."""
    parent = propagate.extract(headers)
    span = _tracer.start_span(
        f"{method} {route}",
        parent,
        SpanKind.SERVER,
        {"http.request.method": method, "http.route": route, "url.path": path, "serve.request_id": request_id},
    )
    return span, context.attach(trace.set_span_in_context(span, parent)), f"{span.get_span_context().trace_id:032x}"


def end_request(span: Span, token: object, status: int | None, model: str | None, error: BaseException | None) -> None:
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    if model:
        span.set_attribute("serve.model", model)
    if error is not None:
        _failed(span, error)
    try:
        context.detach(token)
    finally:
        span.end()


# --- batches -----------------------------------------------------------------------


def batch(model: str, requests: Sequence[SpanContext | None], size: int):
    """The span of one model call: the child of the first sampled request it
    serves, linked to every sampled request (its ``queue wait`` spans link
    back). Recorded only when one of its requests is: None otherwise."""
    if not ENABLED:
        return NULL
    sampled = [found for found in requests if found is not None and found.trace_flags.sampled]
    if not sampled:
        return NULL
    parent = trace.set_span_in_context(NonRecordingSpan(sampled[0]))
    return _current(
        f"model {model}",
        {"serve.model": model, "serve.batch.size": size, "serve.batch.requests": len(requests)},
        SpanKind.INTERNAL,
        parent,
        links=[Link(found) for found in sampled],
    )


def queue_wait(model: str, queued_at: float, started_at: float, batch_span: SpanContext | None, size: int) -> None:
    """The time a request's inputs waited for their batch (monotonic seconds),
    under the current span (the batcher asks only for recorded requests)."""
    if not ENABLED or not queued_at or not started_at:
        return
    # Spans take wall-clock times: the wait ended a measured while ago.
    ended = time.time() - (time.monotonic() - started_at)
    links = [Link(batch_span)] if batch_span is not None else []
    span = _tracer.start_span(
        "queue wait", None, SpanKind.INTERNAL, {"serve.model": model, "serve.batch.size": size}, links,
        _ns(ended - (started_at - queued_at)),
    )
    span.end(_ns(ended))
