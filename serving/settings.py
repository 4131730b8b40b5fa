"""Every knob of serve-http, declared once.

The service, ``gunicorn.conf.py``, the README's settings table and the tests all
read this class. Each field has an environment name, a default and a one-line
description. Service knobs carry the ``SERVE_`` prefix; the Gunicorn process
knobs keep the names operators already use (``PORT``, ``WORKERS`` ...).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal, Optional

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

ENV_PREFIX = "SERVE_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _process_knob(name: str, default, description: str, **constraints):
    """A Gunicorn knob read from its bare name (``PORT``) or the prefixed one."""
    return Field(
        default,
        description=description,
        validation_alias=AliasChoices(name, ENV_PREFIX + name),
        **constraints,
    )


def default_workers() -> int:
    """One worker per core: measured faster for CPU-bound models than the design
    card's 2 x cores + 1 (README, "Workers, threads and load shedding"), which stays one setting away."""
    return os.cpu_count() or 1


CommaList = Annotated[list[str], NoDecode]

# Which routes each public group opens; serve_http maps the groups to endpoints.
PUBLIC_ROUTE_GROUPS = ("health", "docs", "metrics")

_KEY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_KEY_ENTRY = re.compile(r"^(?P<name>[^:\s]+)(?:\s*:\s*|\s+)(?P<key>.*)$")


def _split_key_entry(entry: str) -> tuple[str, str, str]:
    """``name:key`` or ``name key`` -> (name, separator, key); a bare key has no separator."""
    match = _KEY_ENTRY.match(entry.strip())
    if match is None:
        return "", "", entry.strip()
    return match["name"], ":", match["key"].strip()


class Settings(BaseSettings):
    """Settings from the environment, a ``.env`` file, or keyword arguments."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # A rejected setting may be an API key: errors never echo the input.
        hide_input_in_errors=True,
    )

    # --- models ---------------------------------------------------------
    model_repository: Path = Field(
        REPO_ROOT / "models", description="Folder with one sub-folder per served model."
    )
    models: CommaList = Field(
        default_factory=list,
        description="Comma-separated model names to serve; empty serves every folder.",
    )
    default_classifier: str = Field(
        "sentiment", description="Model used by /v1/classify and /prediction when none is named."
    )
    default_detector: str = Field(
        "faces", description="Model used by /v1/detect, /, /predict and /object-detection."
    )
    forecast_model: str = Field(
        "streamflow", description="Forecast model of GET /forecast, whose sites GET /info lists."
    )
    image_generation_model: str = Field(
        "tiny-diffusion", description="Text-to-image model of POST /generated-images and POST /image-generation."
    )
    recommendation_ensemble: str = Field(
        "sentiment-ensemble", description="Ensemble model answering POST /recommendation."
    )

    # --- limits ---------------------------------------------------------
    max_body_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest decoded image file accepted (413 above)."
    )
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest width x height accepted; guards against decompression bombs."
    )
    image_formats: CommaList = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"],
        description="Image formats (Pillow names) that are opened; anything else is 400.",
    )
    max_batch_items: int = Field(
        64, gt=0, description="Most inputs one request may carry (422 above)."
    )
    max_text_chars: int = Field(
        20_000, gt=0, description="Longest text accepted for classification (422 above)."
    )

    # --- batching and deadlines ------------------------------------------
    batching: bool = Field(
        True, description="Micro-batch concurrent requests per model as manifests configure; false calls models directly."
    )
    inference_timeout_ms: int = Field(
        20_000, gt=0, description="Deadline of one request's inference; queued past it is dropped, late answers are 504."
    )

    # --- prediction cache -----------------------------------------------
    cache_backend: Literal["disk", "memory", "none"] = Field(
        "disk", description="Prediction cache: disk (shared by workers), memory (per worker) or none."
    )
    cache_dir: Path = Field(
        REPO_ROOT / "var" / "cache", description="Folder of the disk cache."
    )
    cache_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Size bound of the disk cache; least recently used entries go first."
    )
    cache_max_items: int = Field(
        10_000, gt=0, description="Entry bound of the memory cache."
    )

    # --- streaming (WebSocket /v1/detect/stream) ---------------------------
    stream_max_frame_bytes: int = Field(
        2 * 1024 * 1024, gt=0, description="Largest WebSocket message (frame or options); a larger one closes the stream with 1009."
    )
    stream_max_connections: int = Field(
        4, gt=0, description="Open detection streams per worker (503 above); keep it below THREADS so HTTP requests keep threads."
    )
    stream_idle_timeout_s: float = Field(
        60.0, gt=0, description="Seconds without a message from the client before the server closes the stream (1000)."
    )

    # --- security -------------------------------------------------------
    # repr=False: a settings object printed or logged never shows a key.
    api_keys: CommaList = Field(
        default_factory=list,
        repr=False,
        description="Accepted API keys as name:key (or bare keys, named key1, key2...), comma-separated; "
        "sent as X-Api-Token or Authorization: Bearer. No keys from here or the file disables auth.",
    )
    api_keys_file: Optional[Path] = Field(
        None,
        description="File of more API keys, one `name:key` or `name key` per line, # comments; read at start.",
    )
    public_routes: CommaList = Field(
        default_factory=lambda: list(PUBLIC_ROUTE_GROUPS),
        description="Route groups callable without a key when keys are set: health, docs, metrics.",
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins allowed to call from a browser (CORS), e.g. https://app.example.com, or *; empty sends no CORS headers.",
    )
    cors_allow_credentials: bool = Field(
        False, description="Let browsers send cookies/credentials cross-origin (never with * origins)."
    )

    # --- background jobs ---------------------------------------------------
    redis_url: str = _process_knob(
        "REDIS_URL", "", "Redis for the job queue and job records (scale-out); empty keeps both in SQLite."
    )
    jobs_dir: Path = Field(
        REPO_ROOT / "var" / "jobs", description="Folder of the embedded job queue and records (SQLite) and of local results."
    )
    s3_bucket: str = Field("", description="S3 bucket for job results (pre-signed downloads); empty keeps results on local disk.")
    s3_endpoint_url: str = Field("", description="S3-compatible endpoint (MinIO, moto ...); empty means AWS.")
    s3_region: str = Field("us-east-1", description="Region of the S3 bucket; keys come from the standard AWS_* variables.")
    s3_prefix: str = Field("jobs/", description="Key prefix of job results in the bucket.")
    s3_url_expiry_s: int = Field(3600, gt=0, description="Lifetime of a pre-signed result URL, in seconds.")
    job_retention_s: int = Field(
        7 * 24 * 3600, gt=0, description="Seconds a finished job's record and results are kept."
    )
    job_max_inputs: int = Field(100_000, gt=0, description="Most inputs one job may carry (422 above).")
    job_batch_size: int = Field(64, gt=0, description="Inputs per model call in a job worker.")
    job_shard_size: int = Field(
        5000, gt=0, description="Inputs per shard of a job: each shard is its own queue message, taken by any idle "
        "job worker process, retried and saved on its own (a request's shard_size overrides it)."
    )
    job_input_uris: str = Field(
        "", description="Comma-separated S3 prefixes (s3://bucket/inputs/) and local folders from which POST /v1/jobs "
        "may read its inputs_uri; empty: inputs by reference are refused."
    )
    job_workers: int = Field(1, gt=0, description="Processes of one job worker (make worker), forked after the models load.")
    job_heartbeat_s: float = Field(2.0, gt=0, description="Seconds between a running job's heartbeats.")
    job_metrics_port: int = Field(
        9101, ge=0, le=65535,
        description="Port of a job worker's own Prometheus /metrics (its processes' jobs, inputs, batches) on HOST; 0: none.",
    )
    job_visibility_timeout_s: float = Field(
        30.0, gt=0, description="A running job silent this long is taken back (its worker died) and retried."
    )
    job_max_attempts: int = Field(3, gt=0, description="Runs a job gets before a lost worker marks it failed.")
    job_worker_grace_s: float = Field(
        30.0, ge=0, description="POST /v1/jobs answers 503 no_job_worker once no job worker heartbeat was seen this long "
        "(counted from the web start until a first one); 0 never refuses."
    )
    job_orphan_age_s: float = Field(
        3600.0, gt=0, description="A job whose record the backend lost (410 job_lost) keeps its saved results this long "
        "after their last write; then the job sweep deletes them."
    )
    jobs_allow_volatile: bool = Field(
        False, description="Accept a Redis that keeps nothing on disk (no AOF, no RDB save): a Redis restart then loses every job."
    )
    schedule_job_sweep: str = Field(
        "rate 2s", description="When the job worker takes back lost jobs and drops expired ones: rate <n>s, delay <n>s, cron <fields> or off."
    )
    schedule_forecasts: str = Field(
        "rate 1h", description="When the job worker recomputes and stores every site's forecast (same forms)."
    )
    schedule_cache_prune: str = Field(
        "rate 1m", description="When the job worker trims the disk prediction cache to its size bound (same forms; off: each write evicts)."
    )

    # --- gunicorn process -----------------------------------------------
    host: str = _process_knob("HOST", "0.0.0.0", "Address Gunicorn binds.")
    port: int = _process_knob("PORT", 8000, "Port Gunicorn binds.", ge=0, le=65535)
    workers: int = Field(
        default_factory=default_workers,
        description="Gunicorn worker processes (default one per core; 2 x cores + 1 is the classic I/O-bound choice).",
        validation_alias=AliasChoices("WORKERS", ENV_PREFIX + "WORKERS"),
        gt=0,
    )
    threads: int = _process_knob("THREADS", 8, "Threads per worker (gthread worker class).", gt=0)
    worker_class: str = _process_knob(
        "WORKER_CLASS", "gthread", "Gunicorn worker class: gthread, sync or gevent."
    )
    worker_backlog: int = Field(
        64,
        ge=0,
        description="Requests a gthread worker lets wait for a free thread; the next gets 503 at once (0: no bound).",
    )
    worker_max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="503 at once for a request that would wait longer than this for a gthread thread, predicted from recent requests (0: no bound in time).",
    )
    worker_accept_delay_ms: float = Field(
        5.0,
        ge=0,
        description="A gthread worker holding THREADS connections leaves a new one this long for a less busy worker (0: take it at once).",
    )
    timeout: int = _process_knob("TIMEOUT", 60, "Seconds a silent worker lives before it is killed and replaced.", gt=0)
    graceful_timeout: int = _process_knob(
        "GRACEFUL_TIMEOUT", 30, "Seconds in-flight requests get to finish on shutdown.", gt=0
    )
    keepalive: int = _process_knob("KEEPALIVE", 5, "Seconds an idle keep-alive connection is held.", ge=0)
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection gets to send a request line and headers (from its accept, or its next request's first byte); 408 and close after.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a request gets to send its body once its headers are in; 408 and close after.",
    )
    worker_connections: int = Field(
        1000,
        gt=0,
        description="Connections one gthread worker holds (reading, waiting, kept alive); past it a new one gets 503 and is closed.",
    )
    log_level: str = _process_knob("LOG_LEVEL", "info", "Log level: debug, info, warning, error.")
    access_log: str = _process_knob(
        "ACCESS_LOG", "-", "Access log target: - for stdout, a file path, or empty to disable."
    )
    access_log_format: str = _process_knob(
        "ACCESS_LOG_FORMAT",
        '%(h)s "%(r)s" %(s)s %(b)s %(M)sms pid=%(p)s rid=%({x-request-id}o)s',
        "Gunicorn access log format.",
    )
    max_requests: int = _process_knob(
        "MAX_REQUESTS", 0, "Requests after which a worker is replaced (0: never); bounds slow leaks.", ge=0
    )
    max_requests_jitter: int = _process_knob(
        "MAX_REQUESTS_JITTER", 0, "Random extra requests per worker before replacement, so workers do not restart together.", ge=0
    )
    torch_threads: int = Field(
        0, ge=0, description="Torch intra-op threads per worker; 0 picks max(1, cores // workers)."
    )

    # --- observability ----------------------------------------------------
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines as JSON objects (json) or plain text (text); Gunicorn's logs included."
    )
    metrics_dir: Path | None = Field(
        None,
        description="Prometheus multiprocess folder, wiped at start; default var/metrics/<PORT>.",
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", ENV_PREFIX + "METRICS_DIR"),
    )
    control_dir: Path | None = Field(
        None, description="Folder where workers ask the master for live model changes, wiped at start; default var/control/<PORT>."
    )

    @field_validator("models", "image_formats", "api_keys", "public_routes", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("image_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]

    def metrics_path(self) -> Path:
        """The multiprocess metrics folder; one per port, so two services on one
        machine never wipe each other's files."""
        return self.metrics_dir or REPO_ROOT / "var" / "metrics" / str(self.port)

    def job_metrics_path(self) -> Path:
        """The job worker's multiprocess metrics folder: one per job metrics port."""
        base = self.metrics_dir.parent if self.metrics_dir else REPO_ROOT / "var" / "metrics"
        return base / f"jobs-{self.job_metrics_port}"

    def control_path(self) -> Path:
        """The control folder of live model changes (``serving/control.py``), one per port."""
        return self.control_dir or REPO_ROOT / "var" / "control" / str(self.port)

    @field_validator("schedule_job_sweep", "schedule_forecasts", "schedule_cache_prune")
    @classmethod
    def _schedule(cls, value: str) -> str:
        from serving.schedule import Schedule

        Schedule.parse(value)  # a bad schedule stops start-up with one line
        return value

    @field_validator("public_routes")
    @classmethod
    def _known_groups(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(PUBLIC_ROUTE_GROUPS))
        if unknown:
            raise ValueError(f"unknown route group(s) {unknown}; choose among {list(PUBLIC_ROUTE_GROUPS)}")
        return value

    @model_validator(mode="after")
    def _check_security(self) -> "Settings":
        if "*" in self.cors_origins and self.cors_allow_credentials:
            raise ValueError("SERVE_CORS_ORIGINS=* cannot be combined with SERVE_CORS_ALLOW_CREDENTIALS=true")
        self.named_api_keys()  # refuse to start on a bad key list, not on the first request
        return self

    def named_api_keys(self) -> dict[str, str]:
        """Every accepted key by its name, from ``SERVE_API_KEYS`` then ``SERVE_API_KEYS_FILE``.

        Raises ``ValueError`` (one line, never showing a key) on an empty key, a
        bad or duplicate name, or an unreadable file.
        """
        entries = [(f"SERVE_API_KEYS item {i + 1}", item) for i, item in enumerate(self.api_keys)]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"cannot read SERVE_API_KEYS_FILE {self.api_keys_file}: {type(exc).__name__}") from None
            before = len(entries)
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    entries.append((f"{self.api_keys_file.name} line {number}", line))
            if len(entries) == before:  # an emptied file must not switch authentication off
                raise ValueError(f"SERVE_API_KEYS_FILE {self.api_keys_file} lists no key")
        keys: dict[str, str] = {}
        bare = 0
        for where, entry in entries:
            name, separator, key = _split_key_entry(entry)
            if not separator:
                bare += 1
                name, key = f"key{bare}", entry
            if not _KEY_NAME.match(name):
                raise ValueError(f"{where}: key name must be 1-64 of A-Z a-z 0-9 . _ -")
            if not key:
                raise ValueError(f"{where}: key {name!r} is empty")
            if name in keys:
                raise ValueError(f"{where}: duplicate key name {name!r}")
            keys[name] = key
        return keys

    def torch_threads_per_worker(self) -> int:
        """Intra-op threads so that workers x threads never exceeds the cores."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, (os.cpu_count() or 1) // self.workers)


def load_settings(**overrides) -> Settings:
    """Settings from the environment; a bad value exits with one line naming it (never its value)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise SystemExit(f"serve-http: invalid settings: {problems}") from None


_last_loaded: Settings | None = None


def load_settings_on_reload() -> Settings:
    """``load_settings`` for gunicorn.conf.py, which Gunicorn re-reads on SIGHUP.

    At the first start a bad setting exits; on a reload it is reported and the
    settings of the last good load are kept, so a typo in a keys file cannot
    take a running master and its workers down.
    """
    global _last_loaded
    try:
        _last_loaded = load_settings()
    except SystemExit as exc:
        if _last_loaded is None:
            raise
        print(f"{exc}; the reload keeps the previous settings", file=sys.stderr, flush=True)
    return _last_loaded


def env_names(name: str) -> list[str]:
    """The environment names a field is read from, first one preferred."""
    field = Settings.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [ENV_PREFIX + name.upper()]


def settings_table() -> str:
    """The README's settings table, generated from the class."""
    rows = ["| env | default | description |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        if name == "workers":
            default = "cores"
        elif isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, Path):
            default = os.path.relpath(default, REPO_ROOT)
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `{env_names(name)[0]}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
