"""Request and response bodies of the HTTP API, as pydantic models.

flask-pydantic-spec validates requests against these and derives ``openapi.yml``
from them. Request models forbid unknown fields and NaN/Infinity and coerce no types, so
a typo in a field name or a number sent as a string is a 422 that names the
field instead of a silently ignored or reinterpreted option.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.detection import DetectionOptions


class Strict(BaseModel):
    # strict: "20" is not a number and true is not 1, as the JSON Schema says.
    # hide_input_in_errors: flask-pydantic-spec serialises the error (input
    # included) before our hook replaces it; a deeply nested input then broke
    # that serialisation (500), and a 1 MB one was copied for nothing.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, hide_input_in_errors=True)


# --- detection -------------------------------------------------------------


class Feature(Strict):
    """Detection options, named as in the seed API."""

    maxResults: int = Field(20, ge=1, le=1000, description="Most objects returned.")
    score_th: float = Field(0.3, ge=0, le=1, description="Lowest score kept.")
    nms_iou: float = Field(0.4, ge=0, le=1, description="IoU above which overlapping boxes of one label are merged.")
    min_height: float = Field(0.0, ge=0, le=1, description="Smallest box height, as a fraction of the image height.")
    min_width: float = Field(0.0, ge=0, le=1, description="Smallest box width, as a fraction of the image width.")
    type: Optional[str] = Field(None, max_length=200, description="Keep only this label.")

    def options(self) -> DetectionOptions:
        return DetectionOptions(
            max_results=self.maxResults,
            score_th=self.score_th,
            nms_iou=self.nms_iou,
            min_height=self.min_height,
            min_width=self.min_width,
            label=self.type,
        )


class ImageContent(Strict):
    content: str = Field(min_length=1, description="The image file (JPEG, PNG, ...) in base64.")


class DetectItem(Strict):
    image: ImageContent
    features: list[Feature] = Field(
        default_factory=lambda: [Feature()],
        min_length=1,
        max_length=16,
        description="Each feature is one set of options; their objects are concatenated.",
    )
    model: Optional[str] = Field(None, max_length=64, description="Detection model; the default detector if omitted.")


class DetectRequest(Strict):
    requests: list[DetectItem] = Field(min_length=1, description="One entry per image.")


class PixelBox(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class NormalizedBox(BaseModel):
    x: float
    y: float
    width: float
    height: float


class DetectedObject(BaseModel):
    label: str
    score: float
    box: PixelBox = Field(description="Corners in pixels of the upright (EXIF-rotated) image.")
    normalizedBox: NormalizedBox = Field(description="Top-left corner and size as fractions of the image.")


class DetectResult(BaseModel):
    model: str
    width: int
    height: int
    objects: list[DetectedObject]


class DetectResponse(BaseModel):
    responses: list[DetectResult]


# --- classification ----------------------------------------------------------


class ClassifyRequest(Strict):
    text: Optional[str] = Field(None, description="One text.")
    texts: Optional[list[str]] = Field(None, min_length=1, description="Several texts, answered in order.")
    model: Optional[str] = Field(None, max_length=64, description="Classifier; the default classifier if omitted.")

    @model_validator(mode="after")
    def _one_of(self) -> "ClassifyRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self


class ClassScores(BaseModel):
    category: str
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    category: Optional[str] = Field(None, description="For a single 'text'.")
    scores: Optional[dict[str, float]] = Field(None, description="For a single 'text'.")
    results: Optional[list[ClassScores]] = Field(None, description="For 'texts', in order.")


# --- generic predict -----------------------------------------------------------


class PredictRequest(Strict):
    inputs: list[str] = Field(
        min_length=1, description="Texts for text models, base64 image files for image models."
    )
    parameters: Feature = Field(default_factory=Feature, description="Detection options (image models).")


class DetectionOutput(BaseModel):
    width: int
    height: int
    objects: list[DetectedObject]


class PredictResponse(BaseModel):
    model: str
    version: str
    task: str
    outputs: list[Any] = Field(description="ClassScores for text models, DetectionOutput for detectors.")


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


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    models: dict[str, ModelReadiness]


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


class Info(BaseModel):
    name: str
    version: str
    models: list[ModelCard]
    default_classifier: str
    default_detector: str
    process: ProcessInfo


# --- compatibility routes ------------------------------------------------------------


class FlatPredictRequest(Strict):
    """``POST /predict``: one base64 image with the options beside it."""

    image: str = Field(min_length=1, description="The image file in base64.")
    maxResults: int = Field(20, ge=1, le=1000)
    score_th: float = Field(0.3, ge=0, le=1)
    nms_iou: float = Field(0.4, ge=0, le=1)
    min_height: float = Field(0.0, ge=0, le=1)
    min_width: float = Field(0.0, ge=0, le=1)
    type: Optional[str] = Field(None, max_length=200)

    def feature(self) -> Feature:
        return Feature(**self.model_dump(exclude={"image"}))


class Vertex(BaseModel):
    x: float
    y: float
    width: float
    height: float
    score: float


class FlatPredictResponse(BaseModel):
    normalizedVertices: list[Vertex]


class PredictionRequest(Strict):
    text: str


class PredictionResponse(BaseModel):
    category: str


class SimpleObject(BaseModel):
    box: list[int] = Field(description="[x1, y1, x2, y2] in pixels.")
    label: str
    score: float


class ObjectDetectionResponse(BaseModel):
    objects: list[SimpleObject]


# --- background jobs --------------------------------------------------------------------


class JobRequest(Strict):
    model: str = Field(min_length=1, max_length=64, description="The model every input goes through.")
    inputs: list[str] = Field(
        min_length=1, description="Texts for text models, base64 image files for image models."
    )
    parameters: Feature = Field(default_factory=Feature, description="Detection options (image models).")


class JobUploadForm(Strict):
    """``POST /v1/jobs/upload``'s form fields; the file goes in the ``inputs`` part."""

    model: str = Field(min_length=1, max_length=64, description="The model every input goes through.")
    parameters: Feature = Field(default_factory=Feature, description="Detection options, as a JSON object.")


class JobProgress(BaseModel):
    done: int = Field(description="Inputs whose results are saved.")
    total: int


class JobError(BaseModel):
    code: str
    message: str


class JobStatus(BaseModel):
    id: str
    model: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    progress: JobProgress
    attempts: int = Field(description="Runs a worker started; above 1 after a worker was lost.")
    computed: int = Field(description="Inputs run through the model over all attempts (total when nothing was redone).")
    created_at: str
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    heartbeat_at: Optional[str] = Field(None, description="Last sign of life of the worker running it.")
    error: Optional[JobError] = None
    result_url: Optional[str] = Field(None, description="Where the results are, once the job succeeded.")


# --- errors ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- streaming -------------------------------------------------------------


class StreamOptions(Feature):
    """An option message of ``/v1/detect/stream``: it changes only the fields it names."""

    model: Optional[str] = Field(None, max_length=64, description="Detection model; the default detector if omitted.")
