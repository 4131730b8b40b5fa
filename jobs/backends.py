"""The one place that turns settings into a job store, result storage and queue."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.queue import JobQueue
from jobs.records import JobStore
from jobs.results import LocalResults, ResultStorage, S3Results
from jobs.sources import InputSources
from jobs.sqlite_store import SqliteJobStore
from serving.settings import Settings


@dataclass
class Backends:
    store: JobStore
    results: ResultStorage
    queue: JobQueue
    sources: InputSources  # inputs named by reference (SERVE_JOB_INPUT_URIS)

    @property
    def name(self) -> str:
        """``sqlite+disk``, ``redis+s3`` ...: what the worker's start-up line names."""
        store = "sqlite" if isinstance(self.store, SqliteJobStore) else "redis"
        results = "s3" if isinstance(self.results, S3Results) else "disk"
        return f"{store}+{results}"


def build_store(settings: Settings) -> JobStore:
    if settings.redis_url:
        from jobs.redis_store import RedisJobStore

        return RedisJobStore(settings.redis_url, allow_volatile=settings.jobs_allow_volatile)
    return SqliteJobStore(settings.jobs_dir / "jobs.db")


def build_results(settings: Settings) -> ResultStorage:
    if settings.s3_bucket:
        return S3Results(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            url_expiry_s=settings.s3_url_expiry_s,
        )
    return LocalResults(settings.jobs_dir / "results")


def build_backends(settings: Settings, immediate: bool = False) -> Backends:
    """Nothing connects here: SQLite files, Redis connections and the huey
    instance are opened on first use, in the process that uses them."""
    return Backends(
        store=build_store(settings),
        results=build_results(settings),
        queue=JobQueue(settings.redis_url, settings.jobs_dir, immediate=immediate),
        sources=InputSources(settings.job_input_uris, settings.s3_endpoint_url or None, settings.s3_region),
    )
