"""OpenMetrics exemplars on the latency histograms: the trace of a sampled request.

prometheus_client keeps no exemplars in multiprocess mode (its mmap files hold
numbers only), so they are kept here: each process holds, per histogram series
and bucket, the newest observation made inside a sampled span (its trace and
span id, value and time), and writes them to ``exemplars_<pid>.json`` in the
multiprocess folder at most once a second (and a second after the last). A
scrape negotiated as OpenMetrics (``Accept: application/openmetrics-text``)
attaches to each bucket the newest
exemplar of any process: the scraping one's from memory, the others' from
their files (a second old at most). Dead workers' files are deleted with
their metrics (``serving/multiprocess.py``). Exemplars are samples, not
counts: losing one costs nothing, so nothing here ever fails a request.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from serving import multiprocess, tracing

log = logging.getLogger(__name__)

FILE_GLOB = "exemplars_*.json"
FLUSH_S = 1.0

# (metric name, sorted (label, value) pairs) -> {le: (trace id, span id, value, unix time)}
_Found = dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, tuple[str, str, float, float]]]


class ExemplarStore:
    def __init__(self) -> None:
        self._latest: _Found = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._flushed_at = 0.0
        self._pid = os.getpid()
        self._timer: threading.Timer | None = None

    def observe(self, histogram: Any, labels: tuple[str, ...], value: float, span: Any = None) -> None:
        """Keep ``value`` as its bucket's exemplar if ``span`` (a span context;
        default: the current span's) is sampled."""
        found = tracing.exemplar(span)
        if found is None:
            return
        from prometheus_client.utils import floatToGoString

        bound = next(b for b in histogram._upper_bounds if value <= b)
        t = time.time()
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's exemplars are not this process's
                self._latest, self._pid, self._flushed_at, self._timer = {}, os.getpid(), 0.0, None
            key = (histogram._name, tuple(sorted(zip(histogram._labelnames, labels))))
            self._latest.setdefault(key, {})[floatToGoString(bound)] = (found["trace_id"], found["span_id"], value, t)
            self._dirty = True
            if t - self._flushed_at >= FLUSH_S:
                self._flush(t)
            elif self._timer is None and multiprocess.folder() is not None:
                # The last exemplars before a quiet spell still reach the file.
                self._timer = threading.Timer(FLUSH_S - (t - self._flushed_at), self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def _flush_later(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty and self._pid == os.getpid():
                self._flush(time.time())

    def _flush(self, t: float) -> None:
        folder = multiprocess.folder()
        self._flushed_at, self._dirty = t, False
        if folder is None:
            return
        data = [[name, list(labels), buckets] for (name, labels), buckets in self._latest.items()]
        path = folder / f"exemplars_{os.getpid()}.json"
        partial = path.with_suffix(".partial")
        try:
            partial.write_text(json.dumps(data))
            os.replace(partial, path)
        except OSError:
            log.warning("exemplars not written", exc_info=True)

    def merged(self) -> _Found:
        """The newest exemplar per series and bucket over every live process."""
        merged: _Found = {}
        folder = multiprocess.folder()
        sources: list[_Found] = []
        if folder is not None:
            own = folder / f"exemplars_{os.getpid()}.json"
            for path in folder.glob(FILE_GLOB):
                if path != own:
                    sources.append(_read(path))
        with self._lock:
            sources.append({key: dict(buckets) for key, buckets in self._latest.items()})
        for source in sources:
            for key, buckets in source.items():
                into = merged.setdefault(key, {})
                for le, exemplar in buckets.items():
                    if le not in into or into[le][3] < exemplar[3]:
                        into[le] = exemplar
        return merged


def _read(path: Path) -> _Found:
    try:
        rows = json.loads(path.read_text())
        return {(name, tuple(tuple(pair) for pair in labels)): {le: tuple(e) for le, e in buckets.items()} for name, labels, buckets in rows}
    except (OSError, ValueError, TypeError):  # a worker gone mid-write: its exemplars are optional
        return {}


def forget(pid: int, folder: Path) -> None:
    """Delete a dead process's exemplars."""
    try:
        (folder / f"exemplars_{pid}.json").unlink()
    except FileNotFoundError:
        pass


class WithExemplars:
    """A collector that yields ``inner``'s metrics with the exemplars of ``store``
    on their histogram buckets (only the OpenMetrics format renders them)."""

    def __init__(self, inner: Any, store: ExemplarStore) -> None:
        self.inner, self.store = inner, store

    def collect(self) -> Iterable[Any]:
        from prometheus_client.samples import Exemplar

        found = self.store.merged()
        names = {name for name, _ in found}
        for metric in self.inner.collect():
            if metric.type == "histogram" and metric.name in names:
                samples = []
                for sample in metric.samples:
                    if sample.name.endswith("_bucket"):
                        labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                        hit = found.get((metric.name, labels), {}).get(sample.labels.get("le", ""))
                        if hit is not None:
                            trace_id, span_id, value, t = hit
                            sample = sample._replace(exemplar=Exemplar({"trace_id": trace_id, "span_id": span_id}, value, t))
                    samples.append(sample)
                metric.samples = samples
            yield metric


EXEMPLARS = ExemplarStore()
