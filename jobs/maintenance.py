"""The job sweep, run on its schedule (``SERVE_SCHEDULE_JOB_SWEEP``,
``jobs/periodic.py``): take back jobs whose worker died, drop records and
results past the retention period, and delete what result storage holds of
lost jobs.

huey forgets a message once a worker took it, so a worker killed mid-shard
(OOM, kill -9, a lost machine) would leave its shard "running" for ever.
Running shards carry a heartbeat instead; one silent for longer than the
visibility timeout goes back to the queue (the job's other shards go on, and
its saved shards are kept), or fails the job with a reason after
``job_max_attempts`` runs (a job with ``on_error: skip`` gets error lines
for that shard's inputs instead). The store's check-and-set makes it safe for
every worker of every machine to sweep, should two sweeps ever overlap.

A lost job is one whose record the job backend lost (a Redis restarted
without persistence) while result storage still holds its marker or results:
``GET /v1/jobs/{id}`` answers 410 for it. The sweep counts them (the
``lost`` figure of ``/metrics``) and deletes each once nothing was written to
it for ``SERVE_JOB_ORPHAN_AGE_S``. Finding them lists the whole result
storage (a folder listing on disk, about one LIST request per 1,000 objects
in S3) and looks every job up in the store, so it runs at most once a minute
(``LOST_SCAN_S``), not on every sweep.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from jobs.backends import Backends
from jobs.records import now
from serving.settings import Settings

log = logging.getLogger("jobs.maintenance")

LOST_SCAN_S = 60.0


class SweepOutcome(NamedTuple):
    requeued: list[tuple[str, int]]  # (job id, shard)
    failed: list[str]
    purged: list[str]  # finished jobs past retention
    lost: list[str]  # lost jobs whose results were deleted


class Maintenance:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self._next_lost_scan = 0.0

    def sweep(self) -> SweepOutcome:
        """The job ids requeued, failed, purged and lost-and-deleted by this run."""
        store = self.backends.store
        requeued, failed = store.requeue_stale(
            now() - self.settings.job_visibility_timeout_s, self.settings.job_max_attempts
        )
        for job_id, shard in requeued:
            log.warning("job %s shard %d: its worker stopped answering; queued again", job_id, shard)
            self.backends.queue.enqueue(job_id, shard)
        for job_id in failed:
            log.warning("job %s: its worker stopped answering too often; failed", job_id)
        purged = store.purge(now() - self.settings.job_retention_s)
        for job_id in purged:
            self.backends.results.delete(job_id)
        if purged:
            log.info("purged %d expired job(s)", len(purged))
        lost: list[str] = []
        if now() >= self._next_lost_scan:
            self._next_lost_scan = now() + min(LOST_SCAN_S, self.settings.job_orphan_age_s / 2)
            lost = self.delete_lost()
        return SweepOutcome(requeued, failed, purged, lost)

    def delete_lost(self) -> list[str]:
        """Delete the results of lost jobs unwritten for ``job_orphan_age_s``,
        count the others as lost; the ids deleted."""
        store, results = self.backends.store, self.backends.results
        written = dict(results.jobs())
        known = store.known(list(written))
        cutoff = now() - self.settings.job_orphan_age_s
        lost = [job_id for job_id in written if job_id not in known]
        deleted = [job_id for job_id in lost if written[job_id] < cutoff]
        for job_id in deleted:
            results.delete(job_id)
            log.warning("job %s: its record was lost by the job backend; its saved results are deleted", job_id)
        store.set_lost(len(lost) - len(deleted))
        return deleted
