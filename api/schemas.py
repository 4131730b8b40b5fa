"""Request and response bodies of the HTTP API, as pydantic models.

flask-pydantic-spec validates requests against these and derives ``openapi.yml``
from them. Request models forbid unknown fields and NaN/Infinity and coerce no types, so
a typo in a field name or a number sent as a string is a 422 that names the
field instead of a silently ignored or reinterpreted option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from tasks.base import Integer, Strict
from tasks.generation import MAX_SEED, MAX_STEPS, bounded
from tasks.fields import IMAGE_SCHEMA
from tasks.text import Text
from tasks.detection import DetectionParameters, Detections
from tasks.classification import ClassScores

# --- detection -------------------------------------------------------------


Base64File = Annotated[str, Field(min_length=1), WithJsonSchema(IMAGE_SCHEMA)]


def one_of(*fields: tuple[str, dict[str, Any]]) -> ConfigDict:
    """A model config whose JSON schema says: exactly one of these fields, not null."""
    return ConfigDict(
        json_schema_extra={"oneOf": [{"required": [name], "properties": {name: schema}} for name, schema in fields]}
    )


class ImageContent(Strict):
    content: Base64File


class DetectItem(Strict):
    image: ImageContent
    features: list[DetectionParameters] = Field(
        default_factory=lambda: [DetectionParameters()],
        min_length=1,
        max_length=16,
        description="Each feature is one set of options; their objects are concatenated.",
    )
    model: Optional[str] = Field(None, max_length=64, description="Detection model; the default detector if omitted.")


class DetectRequest(Strict):
    requests: list[DetectItem] = Field(min_length=1, description="One entry per image.")


class DetectResult(Detections):
    model: str


class DetectResponse(BaseModel):
    responses: list[DetectResult]


# --- classification ----------------------------------------------------------


class ClassifyRequest(Strict):
    model_config = one_of(("text", {"type": "string"}), ("texts", {"type": "array"}))

    text: Optional[Text] = Field(None, description="One text.")
    texts: Optional[list[Text]] = Field(None, min_length=1, description="Several texts, answered in order.")
    model: Optional[str] = Field(None, max_length=64, description="Classifier; the default classifier if omitted.")

    @model_validator(mode="after")
    def _one_of(self) -> "ClassifyRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self


class ClassifyResponse(BaseModel):
    model: str
    category: Optional[str] = Field(None, description="For a single 'text'.")
    scores: Optional[dict[str, float]] = Field(None, description="For a single 'text'.")
    results: Optional[list[ClassScores]] = Field(None, description="For 'texts', in order.")


# --- generic predict -----------------------------------------------------------


class PredictRequest(Strict):
    """``POST /v1/models/{name}/predict``: what an input is depends on the model's task."""

    inputs: list[Any] = Field(
        min_length=1,
        description="One item per input, of the model's task: a text, a base64 image file, a record "
        "{feature: value} ... (see the operation of each model).",
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="The task's request parameters (detection options); {} for most tasks."
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    task: str
    outputs: list[Any] = Field(description="One output per input, in order, of the model's task.")


# --- models and health ---------------------------------------------------------


class ModelCard(BaseModel):
    name: str
    task: str
    adapter: str
    version: str
    labels: list[str]
    description: str
    ready: bool


class ModelList(BaseModel):
    models: list[ModelCard]


class Health(BaseModel):
    status: str


class ModelReadiness(BaseModel):
    ready: bool
    optional: bool = Field(description="An optional model may fail to load without making the service unready.")
    reason: Optional[str] = Field(None, description="Why it failed to load, in one line.")


class SubsystemHealth(BaseModel):
    """How a part the models do not need is: the job subsystem, the cache."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded", "down"] = Field(
        description="ok; degraded: it works, with a fault named in the other fields; down: it does not work"
    )


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    models: dict[str, ModelReadiness]
    jobs: SubsystemHealth | None = Field(None, description="The job backend and workers (null: no job service)")
    cache: SubsystemHealth = Field(description="The prediction cache")


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class CacheCleared(BaseModel):
    cleared: int


class ProcessInfo(BaseModel):
    pid: int
    compute_threads: int = Field(description="Torch intra-op threads of the worker that answered (OpenCV's if no torch).")
    batching: bool


class Site(BaseModel):
    """A gauge site of the forecast model's site table (``sites.db``)."""

    id: str
    name: str
    latitude: Optional[float] = None
    longitude: Optional[float] = None
    area: Optional[float] = Field(None, description="Catchment area, km2.")
    elevation: Optional[float] = Field(None, description="Metres above sea level, where the table gives it.")


class SitesData(BaseModel):
    model: Optional[str] = Field(None, description="The forecast model (SERVE_FORECAST_MODEL), null when none is served.")
    sites: list[Site]


class Info(BaseModel):
    """The service's own keys, and the forecast seed's envelope around its site list."""

    name: str
    version: str
    models: list[ModelCard]
    default_classifier: str
    default_detector: str
    process: ProcessInfo
    success: bool
    message: str
    data: SitesData


class SeedHealth(Health):
    """``/healthCheck``: the status, and the forecast seed's envelope."""

    success: bool
    message: str
    data: Health


# --- compatibility routes ------------------------------------------------------------


class FlatPredictRequest(DetectionParameters):
    """``POST /predict``: one base64 image with the detection options beside it."""

    image: Base64File

    def parameters(self) -> DetectionParameters:
        return DetectionParameters(**self.model_dump(exclude={"image"}))


class Vertex(BaseModel):
    x: float
    y: float
    width: float
    height: float
    score: float


class FlatPredictResponse(BaseModel):
    normalizedVertices: list[Vertex]


class PredictionRequest(Strict):
    text: Text


class PredictionResponse(BaseModel):
    category: str


class RecommendationRequest(Strict):
    """One input (``input``) or several (``inputs``) of the ensemble named by
    ``SERVE_RECOMMENDATION_ENSEMBLE``, as its task takes them."""

    model_config = one_of(("input", {"not": {"type": "null"}}), ("inputs", {"type": "array"}))

    input: Any = Field(None, description="One input; the answer's result is one output.")
    inputs: Optional[list[Any]] = Field(None, min_length=1, description="Several inputs; the result is a list.")
    parameters: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _one_form(self) -> "RecommendationRequest":
        if (self.input is None) == (self.inputs is None):
            raise ValueError("send either input (one) or inputs (a list)")
        return self


class RecommendationResponse(BaseModel):
    result: Any = Field(description="The ensemble's combined answer (a list for inputs), with partial and failed.")


class SimpleObject(BaseModel):
    box: list[int] = Field(description="[x1, y1, x2, y2] in pixels.")
    label: str
    score: float


class ObjectDetectionResponse(BaseModel):
    objects: list[SimpleObject]


# --- background jobs --------------------------------------------------------------------


class JobRequest(Strict):
    model_config = one_of(("inputs", {"type": "array"}), ("inputs_uri", {"type": "string"}))

    model: str = Field(min_length=1, max_length=64, description="The model every input goes through.")
    inputs: Optional[list[Any]] = Field(
        None, min_length=1, description="The inputs, as the model's predict route takes them (or name them by inputs_uri)."
    )
    inputs_uri: Optional[str] = Field(
        None, min_length=1, max_length=1024,
        description="Where to read the inputs instead: s3://bucket/key or a local path, under what"
        " SERVE_JOB_INPUT_URIS allows; JSON lines (one input per line) or a zip of images.",
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="The task's request parameters.")
    shard_size: bounded(ge=1, le=1_000_000) = Field(
        None, description="Inputs per shard (each taken by any idle job worker process); default SERVE_JOB_SHARD_SIZE."
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="A shard that failed past its last attempt: fail the job, or skip (an error line per input)."
    )


class JobUploadForm(Strict):
    """``POST /v1/jobs/upload``'s form fields; the file goes in the ``inputs`` part."""

    model: str = Field(min_length=1, max_length=64, description="The model every input goes through.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The task's request parameters, as a JSON object.")


class JobProgress(BaseModel):
    done: int = Field(description="Inputs whose results are saved.")
    total: int
    steps_done: Optional[int] = Field(
        None, description="Steps done, for a model that counts them (text to image: denoising steps); else null."
    )
    steps_total: Optional[int] = Field(None, description="Steps of every input together; null for a model without steps.")
    percent: int = Field(description="Whole percent done: by steps where the model counts them, else by inputs.")


class JobError(BaseModel):
    code: str
    message: str


class JobShards(BaseModel):
    total: int = Field(description="Shards the job's inputs are cut into, each its own queue message.")
    done: int = Field(description="Shards whose results are saved.")
    size: int = Field(description="Inputs per shard (the last may hold fewer).")


class JobStatus(BaseModel):
    id: str
    model: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: JobProgress
    shards: JobShards
    on_error: str = Field(description="fail or skip: what a shard failed past its last attempt does.")
    inputs_uri: Optional[str] = Field(None, description="Where the inputs were read from, when named by reference.")
    attempts: int = Field(description="Most runs any shard took; above 1 after a worker was lost or a shard retried.")
    computed: int = Field(description="Inputs run through the model over all attempts (total when nothing was redone).")
    created_at: str
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    heartbeat_at: Optional[str] = Field(None, description="Last sign of life of the worker running it.")
    error: Optional[JobError] = None
    result_url: Optional[str] = Field(None, description="Where the results are, once the job succeeded.")


# --- text to image: the FastAPI book's routes (chapter 14) ------------------------------


class ImageGenerationInput(Strict):
    """The book's request: a prompt, what not to draw, and the denoising steps;
    seed, guidance and size beside them are this server's (optional)."""

    prompt: Text = Field(description="What to draw.")
    negative_prompt: Optional[str] = Field(None, description="What not to draw.")
    num_steps: bounded(ge=1, le=MAX_STEPS) = Field(
        None, description="Denoising steps, 1 to 50; the model's default (its manifest) if omitted."
    )
    guidance_scale: Optional[float] = Field(None, ge=0, le=30, description="Classifier-free guidance.")
    seed: bounded(ge=0, le=MAX_SEED) = Field(None, description="The same seed and inputs give the same image.")
    width: Optional[Integer] = Field(None, description="Pixels, within the model's bounds.")
    height: Optional[Integer] = Field(None, description="Pixels, within the model's bounds.")


class GeneratedImageRead(BaseModel):
    """The book's image row; ``job_id`` and ``status`` are this server's (the job behind it)."""

    id: int = Field(description="A small integer, in order of submission (the job's number).")
    created_at: str
    progress: int = Field(description="Whole percent of the denoising steps done (100 once the image is stored).")
    prompt: str
    negative_prompt: Optional[str] = None
    num_steps: int
    file_name: Optional[str] = Field(None, description="The image's key in result storage, once it is stored.")
    job_id: str
    status: str = Field(description="The job's: queued, running, succeeded, failed or cancelled.")
    error: Optional[JobError] = None


class ImageGenerationOutput(BaseModel):
    task_id: str = Field(description="The job's id: GET /v1/jobs/{task_id} follows it.")


class ImageURL(BaseModel):
    url: str = Field(description="Where the PNG can be downloaded (pre-signed when results are in object storage).")


# --- errors ---------------------------------------------------------------------------


class ErrorDetailItem(BaseModel):
    """One entry of an error's ``details``, in the shape pydantic reports a
    validation problem; further keys carry the values of its kind."""

    model_config = ConfigDict(extra="allow")

    field: Optional[str] = Field(
        description="Path of the input it is about (`requests[0].image.content`, `text`), or null for none.",
    )
    message: str = Field(description="What is wrong, for a person.")
    type: str = Field(
        description="A stable name to branch on: pydantic's error type for a validation problem "
        "(`missing`, `extra_forbidden`, `value_error` ...), else the error's code.",
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="A stable name of the error (`validation_failed`, `model_not_found` ...).")
    message: str
    details: list[ErrorDetailItem] = Field(
        description="Always a list, empty when there is nothing to add: one entry per problem "
        "(every field of a validation error), or one about the error with the values it carries "
        "(`limit`, `available`, `allowed` ...).",
    )
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- streaming -------------------------------------------------------------


class StreamOptions(DetectionParameters):
    """An option message of ``/v1/detect/stream``: it changes only the fields it names."""

    model: Optional[str] = Field(None, max_length=64, description="Detection model; the default detector if omitted.")

    def parameters(self) -> DetectionParameters:
        return DetectionParameters(**self.model_dump(exclude={"model"}))
