"""Section 1: how fast the models themselves are, without HTTP.

``cores`` spawned processes each load every model (as a Gunicorn worker would,
one torch thread each). Per model, process 0 runs alone (the one-process rate),
then all run together (the box's limit for that model), in alternating rounds.
Barriers line the phases up, so idle processes sit blocked and cost no CPU.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.workload import Model, limit_threads

BARRIER_TIMEOUT = 300.0  # loading every model in every process fits well within it
# Alternate the one-process and all-process phases in short rounds and keep the
# medians: a burst from another tenant of the box then spoils one round, not a figure.
ROUNDS = 3


@dataclass
class RawResult:
    solo: float = 0.0  # predictions/s, one process
    total: float = 0.0  # predictions/s, all processes together
    # image models: median seconds per call of each stage
    decode_s: float | None = None
    preprocess_s: float | None = None
    predict_s: float | None = None
    note: str = ""


@dataclass
class _Phase:
    counts: dict[int, float] = field(default_factory=dict)  # process -> calls/s


def calls_per_second(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second of ``fn`` over ``seconds`` of wall time."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def _median_call(fn: Callable[[], Any], seconds: float) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _preprocessor(adapter: Any) -> Callable[[Any], Any] | None:
    """The adapter's own preprocessing, if it exposes one (method or module function)."""
    found = getattr(adapter, "preprocess", None) or getattr(sys.modules[type(adapter).__module__], "preprocess", None)
    return found if callable(found) else None


def _child(
    index: int, repository: str, models: list[tuple[str, str, bool, str]], seconds: float, barrier: Any, out: Any
) -> None:
    limit_threads()
    from predict import ModelRegistry
    from serving.settings import Settings
    from utils_serve import ImageLimits, decode_image

    settings = Settings()
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, tuple(settings.image_formats))
    for name, serve_names, is_image, wire in models:
        # Every process takes every step, even after a failure, so barriers stay aligned.
        try:
            registry = ModelRegistry(repository, serve_names.split(","))
            registry.load_all()
            adapter = registry.get(name)
            item = decode_image(wire, limits).image if is_image else wire
            adapter.predict([item])  # lazy initialisation stays out of the timing
            call: Callable[[], Any] | None = lambda: adapter.predict([item])
        except Exception as exc:
            call = None
            if index == 0:
                out.put((name, "note", 0, f"{type(exc).__name__}: {exc}"))
        for round_ in range(ROUNDS):
            barrier.wait(BARRIER_TIMEOUT)
            if index == 0 and call:
                out.put((name, "solo", round_, calls_per_second(call, seconds / ROUNDS)))
            barrier.wait(BARRIER_TIMEOUT)
            if call:
                out.put((name, "all", round_, calls_per_second(call, seconds / ROUNDS)))
        barrier.wait(BARRIER_TIMEOUT)
        if index == 0 and call and is_image:
            prep = _preprocessor(adapter)
            stage = max(0.5, seconds / 2)
            out.put((name, "decode", 0, _median_call(lambda: decode_image(wire, limits), stage)))
            if prep:
                out.put((name, "preprocess", 0, _median_call(lambda: prep(item), stage)))
            out.put((name, "predict", 0, _median_call(call, stage)))
        barrier.wait(BARRIER_TIMEOUT)


def measure(
    repository: str, models: list[Model], serve_names: dict[str, str], wires: dict[str, str], seconds: float
) -> dict[str, RawResult]:
    """Raw rates per model; ``wires`` holds each model's input as sent (text or base64)."""
    processes = os.cpu_count() or 1
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch state inherited
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    plan = [(m.name, serve_names[m.name], m.is_image, wires[m.name]) for m in models]
    children = [
        ctx.Process(target=_child, args=(i, repository, plan, seconds, barrier, out), daemon=True)
        for i in range(processes)
    ]
    results = {m.name: RawResult() for m in models}
    solo: dict[str, list[float]] = {}
    total: dict[tuple[str, int], float] = {}  # (model, round) -> sum over the processes
    try:
        for child in children:
            child.start()
        while any(child.is_alive() for child in children) or not out.empty():
            if any(child.exitcode not in (None, 0) for child in children):
                barrier.abort()  # a crashed process: release the others now, not at the timeout
            try:
                name, kind, round_, value = out.get(timeout=1.0)
            except queue.Empty:
                continue
            if kind == "note":
                results[name].note = value
            elif kind == "solo":
                solo.setdefault(name, []).append(value)
            elif kind == "all":
                total[name, round_] = total.get((name, round_), 0.0) + value
            else:
                setattr(results[name], f"{kind}_s", value)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(5)
    for name, result in results.items():
        if name in solo:
            result.solo = statistics.median(solo[name])
            result.total = statistics.median(v for (n, _), v in total.items() if n == name)
    return results
