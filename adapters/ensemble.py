"""The ``ensemble`` adapter: several models, called concurrently, one answer.

Manifest::

    task: text-classification          # the members' task
    adapter: ensemble
    depends_on: [sentiment, minilm-sentiment]   # its local members
    options:
      combine: mean                    # vote | mean (classifiers), mean (regressors,
                                       # forecasts), concat (each member's answer)
      timeout_ms: 2000                 # per member, within the request's deadline
      on_failure: skip                 # or fail: the request fails (504 timed out, 502 failed)
      members:
        - model: sentiment             # a model of this repository
        - model: minilm-sentiment
        - name: eu-sentiment           # a remote endpoint
          url: http://10.0.0.5:8000    # speaking our /v1/models/{model}/predict ...
          model: sentiment
          protocol: v1                 # ... or v2 (/v2/models/{model}/infer)
          api_key_env: EU_SENTIMENT_KEY  # sent as Authorization: Bearer, read from the environment

Every member gets the request's inputs at once: local members through the
predictor (their own batching, cache and metrics), remote ones over pooled
HTTP connections (urllib3, a pool per process, never shared across a fork).
The calls run on a thread pool, greenlets where gevent patched threads. The
ensemble waits for them until the member timeout or the request's deadline,
whichever is first; a member past it is timed out (its thread is freed by the
same timeout on its socket). Members are combined on their JSON answers, so
local and remote members mix freely.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextvars
import os
import threading
import time
from collections import Counter
from typing import Any, Callable, Literal, Optional, Sequence

import orjson
import urllib3
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters.base import ModelAdapter, one_line
from serving import tracing
from serving.errors import DeadlineExceeded, ModelLoadError, UpstreamFailed
from tasks import (
    IMAGE_CLASSIFICATION,
    TABULAR_CLASSIFICATION,
    TABULAR_REGRESSION,
    TEXT_CLASSIFICATION,
    TIME_SERIES_FORECAST,
    Task,
)
from tasks.base import validation_details
from tasks.ensemble import EnsembleTask, MemberInput

CLASSIFIERS = (TEXT_CLASSIFICATION, IMAGE_CLASSIFICATION, TABULAR_CLASSIFICATION)
RULES = {
    **{task: ("vote", "mean", "concat") for task in CLASSIFIERS},
    TABULAR_REGRESSION: ("mean", "concat"),
    TIME_SERIES_FORECAST: ("mean", "concat"),
}

# (member name, inputs, deadline) -> one JSON answer per input.
MemberCall = Callable[[str, list[MemberInput], float], list[Any]]


class Member(BaseModel):
    """A local model (``model`` alone) or a remote endpoint (``url``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="The member model: of this repository, or of the remote server.")
    name: Optional[str] = Field(None, description="What answers and errors call it; default: model (or model@host).")
    url: Optional[str] = Field(None, pattern=r"^https?://", description="Base URL of a remote serve-http / V2 server.")
    protocol: Literal["v1", "v2"] = "v1"
    api_key_env: Optional[str] = Field(None, description="Environment variable holding the remote's API key.")

    @model_validator(mode="after")
    def _named(self) -> "Member":
        if self.name is None:
            host = urllib3.util.parse_url(self.url).host if self.url else None
            self.name = f"{self.model}@{host}" if host else self.model
        return self


class EnsembleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[Member] = Field(min_length=1)
    combine: Literal["vote", "mean", "concat"] = "mean"
    timeout_ms: float = Field(2000, gt=0, le=600_000)
    on_failure: Literal["fail", "skip"] = "fail"
    pool_connections: int = Field(16, ge=1, le=1024, description="Pooled connections kept per remote host.")


class Ensemble(ModelAdapter):
    """Members called concurrently, combined by the manifest's rule."""

    tasks = tuple(RULES)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: EnsembleOptions | None = None
        self.members: list[Member] = []
        self._pid = 0
        self._lock = threading.Lock()
        self._pool: futures.ThreadPoolExecutor | None = None
        self._http: urllib3.PoolManager | None = None
        self._features: list[str] = []  # a tabular task's columns, in order (V2 members)

    def load(self) -> None:
        try:
            config = EnsembleOptions.model_validate(self.options)
        except ValidationError as error:
            problems = "; ".join(f"{d['field']}: {d['message']}" for d in validation_details(error, "options"))
            raise ModelLoadError(self.name, problems) from None
        task = self.manifest.task
        if config.combine not in RULES.get(task, ()):
            raise ModelLoadError(self.name, f"combine {config.combine!r} does not apply to {task}; use {' or '.join(RULES[task])}")
        names = [m.name for m in config.members]
        if len(set(names)) != len(names):
            raise ModelLoadError(self.name, f"two members share a name: {', '.join(sorted(n for n in names if names.count(n) > 1))}")
        for member in config.members:
            if member.url is None:
                if member.model not in self.dependencies:
                    raise ModelLoadError(self.name, f"local member {member.model!r} must be listed in depends_on")
                found = self.dependencies[member.model].manifest.task
                if found != task:
                    raise ModelLoadError(self.name, f"member {member.model!r} does {found}, the ensemble {task}")
            elif member.protocol == "v2" and task not in (TEXT_CLASSIFICATION, TABULAR_CLASSIFICATION, TABULAR_REGRESSION):
                raise ModelLoadError(self.name, f"V2 members serve text and tabular tasks here, not {task}")
            if member.api_key_env and member.api_key_env not in os.environ:
                raise ModelLoadError(self.name, f"member {member.name!r}: environment variable {member.api_key_env} is not set")
        self.config, self.members = config, config.members
        local = [self.dependencies[m.model] for m in config.members if m.url is None]
        self.labels = list(self.manifest.labels) or (list(local[0].labels) if local else [])

    def wrap_task(self, task: Task) -> Task:
        """The registry serves the members' task through this wrapper."""
        assert self.config is not None
        self._features = [f.name for f in getattr(task, "features", ())]
        return EnsembleTask(task, concat=self.config.combine == "concat")

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        raise RuntimeError("an ensemble runs through the predictor: Predictor(registry).predict(name, inputs)")

    # --- the fan-out ------------------------------------------------------

    def fan_out(self, call_local: MemberCall, request_timeout: float, batch: Sequence[MemberInput]) -> list[Any]:
        """Every member's answers to ``batch``, concurrently, combined."""
        assert self.config is not None
        config, items = self.config, list(batch)
        started = time.monotonic()
        deadline = started + min(config.timeout_ms / 1000, request_timeout)
        pool = self._executor()
        calls = {}
        for member in self.members:
            call = call_local if member.url is None else self._call_remote
            context = contextvars.copy_context()  # the request id reaches the member's logs
            calls[pool.submit(context.run, call, member.name if member.url else member.model, items, deadline)] = member
        done, late = futures.wait(calls, timeout=max(0.0, deadline - time.monotonic()))
        answers: dict[str, list[Any]] = {}
        failed: dict[str, str] = {}
        for future, member in calls.items():
            if future in late:
                future.cancel()
                failed[member.name] = f"no answer within {(deadline - started) * 1000:.0f} ms"
                continue
            try:
                answers[member.name] = future.result()
            except Exception as exc:  # a member's error is the ensemble's to report, by name
                failed[member.name] = one_line(exc) if not hasattr(exc, "message") else exc.message
        if failed and (config.on_failure == "fail" or not answers):
            timed_out = [m.name for f, m in calls.items() if f in late]
            details = {"failed": failed}
            if timed_out and len(timed_out) == len(failed):
                raise DeadlineExceeded(f"ensemble {self.name!r}: {', '.join(failed)} timed out", details=details)
            raise UpstreamFailed(f"ensemble {self.name!r}: {', '.join(failed)} failed", details=details)
        order = [m.name for m in self.members if m.name in answers]
        return [self._combine({name: answers[name][i] for name in order}, sorted(failed)) for i in range(len(items))]

    def _combine(self, answers: dict[str, Any], failed: list[str]) -> dict[str, Any]:
        assert self.config is not None
        rule, task = self.config.combine, self.manifest.task
        marks = {"partial": bool(failed), "failed": failed}
        if rule == "concat":
            return {"answers": answers, **marks}
        outputs = list(answers.values())
        if task in CLASSIFIERS:
            combined = vote(outputs) if rule == "vote" else mean_scores(outputs, list(answers))
        elif task == TABULAR_REGRESSION:
            combined = mean_regression(outputs)
        else:
            combined = mean_forecast(outputs)
        return {**combined, **marks}

    # --- remote members ---------------------------------------------------

    def _executor(self) -> futures.ThreadPoolExecutor:
        # Made in the process that uses it: threads and sockets do not survive a fork.
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    assert self.config is not None
                    workers = max(4, 8 * len(self.members))
                    self._pool = futures.ThreadPoolExecutor(workers, thread_name_prefix=f"ensemble-{self.name}")
                    self._http = urllib3.PoolManager(
                        num_pools=len(self.members) + 1, maxsize=self.config.pool_connections, retries=False
                    )
                    self._pid = os.getpid()
        return self._pool

    def _call_remote(self, name: str, items: list[MemberInput], deadline: float) -> list[Any]:
        member = next(m for m in self.members if m.name == name)
        assert member.url is not None and self._http is not None
        base = member.url.rstrip("/")
        if member.protocol == "v1":
            url, body = f"{base}/v1/models/{member.model}/predict", {"inputs": [item.raw for item in items]}
            parameters = items[0].parameters.model_dump(exclude_defaults=True) if items else {}
            if parameters:
                body["parameters"] = parameters
        else:
            url, body = f"{base}/v2/models/{member.model}/infer", {"inputs": v2_inputs(self.manifest.task, items, self._features)}
        headers = {"Content-Type": "application/json"}
        if member.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[member.api_key_env]}"
        left = max(0.001, deadline - time.monotonic())
        attributes = {"http.request.method": "POST", "server.address": urllib3.util.parse_url(base).host or "",
                      "serve.member": name, "serve.inputs": len(items)}
        with tracing.span(f"POST {name}", attributes, SpanKind.CLIENT) as span:
            tracing.inject(headers)  # the member continues this trace
            try:
                response = self._http.request(
                    "POST", url, body=orjson.dumps(body), headers=headers,
                    timeout=urllib3.Timeout(connect=left, read=left), retries=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise UpstreamFailed(f"{name}: {type(exc).__name__}") from None
            if span is not None:
                span.set_attribute("http.response.status_code", response.status)
        if response.status != 200:
            raise UpstreamFailed(f"{name}: HTTP {response.status} {_error_message(response.data)}")
        try:
            found = orjson.loads(response.data)
            outputs = found["outputs"] if member.protocol == "v1" else v2_outputs(self.manifest.task, found, self.labels)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamFailed(f"{name}: an answer not in the {member.protocol} shape ({one_line(exc)})") from None
        if not isinstance(outputs, list) or len(outputs) != len(items):
            raise UpstreamFailed(f"{name}: {len(outputs) if isinstance(outputs, list) else 'no'} outputs for {len(items)} inputs")
        return outputs


def _error_message(data: bytes) -> str:
    try:
        return str(orjson.loads(data)["error"]["message"])[:200]
    except Exception:
        return ""


# --- the V2 protocol's tensors ----------------------------------------------


def v2_inputs(task: str, items: list[MemberInput], features: list[str]) -> list[dict[str, Any]]:
    """The request tensors of a V2 member: texts as BYTES [N], numeric records as
    FP64 [N, features] in the model's column order (null: NaN)."""
    raws = [item.raw for item in items]
    if task == TEXT_CLASSIFICATION:
        return [{"name": "text", "datatype": "BYTES", "shape": [len(raws)], "data": raws}]
    rows = [[raw.get(f) for f in features] if isinstance(raw, dict) else list(raw) for raw in raws]
    rows = [[float("nan") if v is None else v for v in row] for row in rows]
    width = len(features)
    return [{"name": "input", "datatype": "FP64", "shape": [len(rows), width], "data": [v for row in rows for v in row]}]


def v2_outputs(task: str, response: dict[str, Any], labels: list[str]) -> list[Any]:
    """A V2 response's tensors as our JSON answers."""
    tensors = {t["name"]: t for t in response["outputs"]}
    if task == TABULAR_REGRESSION:
        return [{"value": float(v)} for v in tensors["value"]["data"]]
    outputs: list[dict[str, Any]] = [{"category": str(label)} for label in tensors["label"]["data"]]
    if "scores" in tensors and labels:
        flat = tensors["scores"]["data"]
        width = len(labels)
        for i, output in enumerate(outputs):
            output["scores"] = dict(zip(labels, (float(v) for v in flat[i * width:(i + 1) * width])))
    return outputs


# --- combine rules ------------------------------------------------------------


def vote(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The label most members give; a tie goes to the label of the highest mean
    score, then to the earliest member's. ``scores`` are the vote shares."""
    counts = Counter(o["category"] for o in outputs)
    mean = mean_scores([o for o in outputs if o.get("scores")], []) if any(o.get("scores") for o in outputs) else None
    first = {label: i for i, label in reversed(list(enumerate(o["category"] for o in outputs)))}

    def rank(label: str) -> tuple:
        return (counts[label], mean["scores"].get(label, 0.0) if mean else 0.0, -first[label])

    winner = max(counts, key=rank)
    return {"category": winner, "scores": {label: round(n / len(outputs), 6) for label, n in sorted(counts.items())}}


def mean_scores(outputs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The mean of the members' probabilities; the label is the highest."""
    missing = [names[i] if i < len(names) else str(i) for i, o in enumerate(outputs) if not o.get("scores")]
    if missing:
        raise UpstreamFailed(f"{', '.join(missing)} gave no scores to average (use combine: vote)")
    labels = sorted({label for o in outputs for label in o["scores"]})
    scores = {label: sum(float(o["scores"].get(label, 0.0)) for o in outputs) / len(outputs) for label in labels}
    return {"category": max(labels, key=lambda label: scores[label]), "scores": {k: round(v, 6) for k, v in scores.items()}}


def mean_regression(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    if all(o.get("values") is not None for o in outputs):
        columns = zip(*(o["values"] for o in outputs))
        return {"values": [round(sum(c) / len(outputs), 9) for c in columns]}
    return {"value": round(sum(float(o["value"]) for o in outputs) / len(outputs), 9)}


def mean_forecast(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Step by step: the mean value, and the mean of each end of the intervals."""
    steps = min(len(o["forecast"]) for o in outputs)
    forecast = []
    for k in range(steps):
        at = [o["forecast"][k] for o in outputs]
        step: dict[str, Any] = {"time": at[0]["time"], "value": round(sum(s["value"] for s in at) / len(at), 6)}
        if all(s.get("lower") is not None and s.get("upper") is not None for s in at):
            step["lower"] = round(sum(s["lower"] for s in at) / len(at), 6)
            step["upper"] = round(sum(s["upper"] for s in at) / len(at), 6)
        forecast.append(step)
    return {"series": outputs[0]["series"], "forecast": forecast}
