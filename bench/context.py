"""What every section shares: the run's configuration, its results so far, a log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import WrkResult
from bench.rawrate import RawResult
from bench.report import Table
from bench.workload import Model, serve_list


@dataclass
class Config:
    sections: set[str]
    repository: Path
    models: list[Model]
    repeat: int
    workers: int
    threads: int
    batching_models: list[str]
    overload_models: list[str]
    raw_s: float
    wrk_s: int
    warm_s: int
    overload_s: float
    grace_s: float  # how long answers to an overload run are awaited after its last request
    memory_requests: int
    logdir: Path


@dataclass
class State:
    """Figures later sections reuse, so each is measured once."""

    table: Table = field(default_factory=Table)
    raw: dict[str, RawResult] = field(default_factory=dict)
    served: dict[tuple[str, str, int], WrkResult] = field(default_factory=dict)  # (server, model, conc)
    startups: list[float] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_env(cfg: Config, models: list[Model], workers: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "SERVE_MODEL_REPOSITORY": str(cfg.repository),
        "SERVE_MODELS": serve_list(cfg.repository, models),
        "SERVE_CACHE_BACKEND": "none",  # measure the models, not the prediction cache
        "SERVE_CACHE_DIR": str(cfg.logdir / "cache"),
        "WORKERS": str(workers),
        "THREADS": str(cfg.threads),
        **(extra or {}),
    }
