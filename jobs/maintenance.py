"""The job sweep, run on its schedule (``SERVE_SCHEDULE_JOB_SWEEP``,
``jobs/periodic.py``): take back jobs whose worker died, and drop records and
results past the retention period.

huey forgets a message once a worker took it, so a worker killed mid-job (OOM,
kill -9, a lost machine) would leave its job "running" for ever. Running jobs
carry a heartbeat instead; one silent for longer than the visibility timeout
goes back to the queue (its saved batches are kept), or fails with a reason
after ``job_max_attempts`` runs. The store's check-and-set makes it safe for
every worker of every machine to sweep, should two sweeps ever overlap.
"""

from __future__ import annotations

import logging

from jobs.backends import Backends
from jobs.records import now
from serving.settings import Settings

log = logging.getLogger("jobs.maintenance")


class Maintenance:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends

    def sweep(self) -> tuple[list[str], list[str], list[str]]:
        """(requeued, failed, purged) job ids."""
        store = self.backends.store
        requeued, failed = store.requeue_stale(
            now() - self.settings.job_visibility_timeout_s, self.settings.job_max_attempts
        )
        for job_id in requeued:
            log.warning("job %s: its worker stopped answering; queued again", job_id)
            self.backends.queue.enqueue(job_id)
        for job_id in failed:
            log.warning("job %s: its worker stopped answering too often; failed", job_id)
        purged = store.purge(now() - self.settings.job_retention_s)
        for job_id in purged:
            self.backends.results.delete(job_id)
        if purged:
            log.info("purged %d expired job(s)", len(purged))
        return requeued, failed, purged
