"""Background jobs: many inputs through one model, off the request path.

The web process records a job and enqueues its id on a huey queue; a worker
process (``python -m jobs.worker``) runs it in batches through the model layer,
saving each batch's results and the job's progress as it goes.

Two backends, picked from settings by :func:`jobs.backends.build_backends`:

- embedded (default): huey's SQLite queue and a SQLite job table under
  ``SERVE_JOBS_DIR``; results on local disk;
- scale-out: ``REDIS_URL`` puts the queue and the job records in Redis;
  ``SERVE_S3_BUCKET`` puts results in S3-compatible storage with pre-signed
  download URLs.

Workers publish a heartbeat in the job store (``jobs/presence.py``); the web
process reads it, the queue and the store for ``/readyz`` and ``/metrics``,
and refuses new jobs while no worker is alive (``jobs/service.py``).
"""
