"""The folder where every Gunicorn process writes its Prometheus metrics.

prometheus_client's multiprocess mode keeps one small mmap file per process and
metric type in ``PROMETHEUS_MULTIPROC_DIR``; a scrape merges them all. Three
things are ours to get right (prometheus_client docs, "Multiprocess Mode"):

- the variable must be set before ``prometheus_client`` is first imported, and
  the folder wiped before the master starts. With ``preload_app`` the master
  loads the app (and so the metrics) before Gunicorn's ``on_starting`` hook
  runs, so ``gunicorn.conf.py`` calls :func:`prepare` when it is read;
- ``mark_process_dead`` when a worker exits, so its live gauges disappear;
- dead workers' counter and histogram files stay, by design: their counts must
  survive. With ``max_requests`` recycling they pile up (one set per worker
  ever started) and every scrape reads them all. :func:`worker_exited` merges a
  dead worker's files into one ``*_archive.db`` per type and deletes them, so
  the folder holds one set per live process plus the archive.

This module does not import ``prometheus_client`` at import time: it must be
usable before the environment variable is set.
"""

from __future__ import annotations

import fcntl
import glob
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LOCK_NAME = ".lock"  # not *.db, so scrapes never read it as metrics
_ARCHIVED_TYPES = ("counter", "histogram")


def prepare(folder: Path) -> Path:
    """Point prometheus_client at ``folder`` and empty it, once per master process.

    Gunicorn reads its config file again on ``SIGHUP``; the live master's files
    must survive that, so once this process has prepared a folder it keeps it
    (a changed setting takes effect at the next start).
    """
    if os.environ.get("_SERVE_METRICS_PREPARED") == str(os.getpid()) and os.environ.get(ENV):
        return Path(os.environ[ENV])
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for pattern in ("*.db", "exemplars_*.json"):
        for stale in folder.glob(pattern):
            stale.unlink()
    os.environ[ENV] = str(folder)
    os.environ["_SERVE_METRICS_PREPARED"] = str(os.getpid())
    return folder


def folder() -> Path | None:
    """The multiprocess folder, or None when metrics live in this process only."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


@contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    with open(path / _LOCK_NAME, "a+") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def scrape_lock(path: Path):
    """Held (shared) while a scrape reads the files, so it never sees a dead
    worker's counts twice (archive and own file) or not at all."""
    return _locked(path, fcntl.LOCK_SH)


def worker_exited(pid: int, path: Path | None = None) -> None:
    """Gunicorn's ``child_exit``: drop the worker's gauges, fold its counters and
    histograms into the archive files."""
    from prometheus_client import multiprocess

    path = path or folder()
    if path is None:
        return
    multiprocess.mark_process_dead(pid, str(path))
    with _locked(path, fcntl.LOCK_EX):
        for kind in _ARCHIVED_TYPES:
            dead = path / f"{kind}_{pid}.db"
            if dead.exists():
                _fold_into_archive(path, kind, dead)
        # Gauges of other modes (max, mostrecent...) of a dead worker mean
        # nothing once it is gone; the master holds the values that matter.
        for stale in glob.glob(str(path / f"gauge_*_{pid}.db")):
            os.remove(stale)
        from serving.exemplars import forget

        forget(pid, path)


def _fold_into_archive(path: Path, kind: str, dead: Path) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    archive = path / f"{kind}_archive.db"
    sources = [str(dead)] + ([str(archive)] if archive.exists() else [])
    # accumulate=False: the raw per-bucket values, as a process file holds them.
    merged = MultiProcessCollector.merge(sources, accumulate=False)
    partial = path / f"{kind}_archive.partial"  # not *.db: invisible to scrapes until renamed
    if partial.exists():
        partial.unlink()
    out = MmapedDict(str(partial))
    try:
        for metric in merged:
            for sample in metric.samples:
                labels = dict(sample.labels)
                key = mmap_key(metric.name, sample.name, list(labels), list(labels.values()), metric.documentation)
                out.write_value(key, sample.value, 0.0)
    finally:
        out.close()
    os.replace(partial, archive)
    dead.unlink()
