"""What a task is: one definition of a kind of model's input item, request
parameters and output item, shared by every route, job and stream.

A task turns a wire value (what a client sends as one input) into what the
model's adapter takes (``decode``), applies the request's parameters to the
model's result (``finish``), shapes the result as JSON (``encode``) and says
how a result is kept in the prediction cache (``dump`` / ``load``). Its
pydantic types (``item_type``, ``Parameters``, ``Output``) validate requests
and document them in OpenAPI.

A task instance belongs to one loaded model (``Task(adapter)``): a tabular
task reads the model's features, a custom task the adapter's own types.
Knows nothing of Flask or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Mapping

import numpy as np
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from serving.errors import ServeError, ValidationFailed, error_details, invalid
from tasks.tensors import BYTES, TensorSpec, byte_strings, utf8
from utils_serve import ImageLimits

if TYPE_CHECKING:
    from adapters.base import ModelAdapter
    from serving.settings import Settings


class Strict(BaseModel):
    """Base of request models: unknown fields, NaN/Infinity and type coercion are errors.

    strict: "20" is not a number and true is not 1, as the JSON Schema says.
    hide_input_in_errors: a validation error never carries (or serialises)
    the client's bytes.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, hide_input_in_errors=True)


def integral(value: Any) -> Any:
    # JSON Schema's integer is a number with no fraction: 20.0 is one.
    if type(value) is float and value.is_integer():
        return int(value)
    return value


#: An integer field of a request: 20 and 20.0 (JSON Schema's integers), never "20" or true.
Integer = Annotated[int, BeforeValidator(integral)]


class NoParameters(Strict):
    """This task takes no request parameters."""


@dataclass(frozen=True)
class Limits:
    """What one input may be: the image limits and the longest text."""

    image: ImageLimits
    max_text_chars: int

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Limits":
        return cls(
            image=ImageLimits(
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
                formats=tuple(settings.image_formats),
            ),
            max_text_chars=settings.max_text_chars,
        )

    @classmethod
    def defaults(cls) -> "Limits":
        from serving.settings import Settings

        return cls.from_settings(Settings(_env_file=None))


@dataclass(frozen=True, slots=True)
class Decoded:
    """One input after its task decoded it: what the adapter gets, and the
    bytes or text that identify it in the prediction cache."""

    value: Any
    key: bytes | str


def field_path(loc: tuple, prefix: str = "") -> str:
    """``("requests", 0, "image")`` -> ``requests[0].image``, after ``prefix``;
    the body itself is ``body``."""
    path = prefix
    for part in loc:
        if isinstance(part, str):  # a client's field name: make it safe to encode
            part = part.encode("utf-8", "replace").decode("utf-8")
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


#: Problems reported per error at most: a batch of bad records stays a short answer.
MAX_DETAILS = 20


def validation_details(error: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Field path, message and type of each problem (the first ``MAX_DETAILS``);
    the offending input is not echoed."""
    return [
        {"field": field_path(tuple(item["loc"]), prefix), "message": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_context=False, include_input=False)[:MAX_DETAILS]
    ]


def schema_error(error: ValidationError, field: str, what: str = "input") -> ValidationFailed:
    return ValidationFailed(f"invalid {what}", details=validation_details(error, field))


def name_field(error: ServeError, field: str) -> ServeError:
    """The same error, each of its details that names no field naming ``field``
    (one detail about the error itself when it had none)."""
    details = error.details or error_details({}, error.message, error.code)
    error.details = [{**detail, "field": detail["field"] or field} for detail in details]
    return error


def canonical_json(value: Any) -> bytes:
    """A stable byte form of a JSON value (sorted keys), for cache keys."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


class Task:
    """Base of every task. Subclasses set ``name``, ``item_type`` (or override
    ``decode``), ``Output`` and ``encode``; the rest has defaults.

    The lifecycle of one request: ``parameters`` (once) -> ``decode`` (per
    item) -> the adapter's ``preprocess`` -> one batched ``predict`` -> the
    adapter's ``postprocess`` -> ``finish`` -> cache -> ``encode``. Request
    parameters never reach the batched call (``finish`` applies them), so
    requests with different parameters share a batch.
    """

    name: ClassVar[str]
    #: The pydantic type of one input item on the wire (validation and OpenAPI).
    item_type: Any = Any
    #: The request's ``parameters`` object.
    Parameters: ClassVar[type[BaseModel]] = NoParameters
    #: The pydantic type of one output item (OpenAPI).
    Output: Any = Any
    #: Whether an uploaded file (a zip member, a multipart file) can be one input.
    takes_files: ClassVar[bool] = False
    #: Whether the task runs only as a background job (its calls take too long
    #: for a request): web processes do not load its weights, and every
    #: synchronous route answers 422 ``jobs_only``.
    jobs_only: ClassVar[bool] = False
    #: A task whose result is a file (``png``): a job stores ``file_bytes`` of
    #: each result as a file of its own, and its result line names it.
    file_suffix: ClassVar[str | None] = None

    def __init__(self, model: "ModelAdapter") -> None:
        self.model = model
        self._default_parameters = self.Parameters()
        # Parameters that change the result are part of its cache key.
        self._has_parameters = bool(self.Parameters.model_fields)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} of {self.model.name}>"

    # --- the request ------------------------------------------------------

    def parameters(self, raw: BaseModel | Mapping[str, Any] | None, field: str = "parameters") -> BaseModel:
        """The request's parameters, validated; a 422 names ``parameters.<field>``."""
        if isinstance(raw, self.Parameters):
            return raw
        if not raw:
            return self._default_parameters
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(exclude_unset=True)
        try:
            return self.Parameters.model_validate(raw)
        except ValidationError as error:
            raise schema_error(error, field, "parameters") from None

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        """Wire value -> what the adapter gets, within the limits; errors name ``field``."""
        raise NotImplementedError

    def check(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> None:
        """The checks a job's inputs pass when it is submitted (cheap ones only:
        image tasks leave decoding to the worker, which fails that input alone)."""
        self.decode(item, parameters, limits, field)

    def example(self) -> Any:
        """One input item for the docs: the manifest's ``example``, else the task's own."""
        example = self.model.manifest.example
        return example if example is not None else self.default_example()

    def default_example(self) -> Any:
        return None

    # --- the result -------------------------------------------------------

    def finish(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        """Apply the request's parameters to one result (before it is cached)."""
        return result

    def encode(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        """One result as JSON-ready data (one item of ``outputs``)."""
        raise NotImplementedError

    def dump(self, result: Any) -> Any:
        """A result as the JSON-ready value the prediction cache stores."""
        return result

    def load(self, value: Any) -> Any:
        """A cached value back as the result ``dump`` was given."""
        return value

    def file_bytes(self, result: Any) -> bytes:
        """A result as the file a job stores (tasks with ``file_suffix``)."""
        raise NotImplementedError

    def steps(self, item: Any, parameters: BaseModel, limits: Limits) -> int:
        """The steps a job's progress counts for one input while it is computed
        (a diffusion pipeline's denoising steps); 0: progress by inputs only."""
        return 0

    def cacheable(self, result: Any) -> bool:
        """Whether a result may be cached (an ensemble's partial answer may not)."""
        return True

    def cache_options(self, parameters: BaseModel) -> str:
        """What of the parameters keys the cache beside the input."""
        if not self._has_parameters:
            return ""
        return canonical_json(parameters.model_dump()).decode()

    # --- Open Inference Protocol (V2) tensors -----------------------------

    def tensor_inputs(self) -> list[TensorSpec]:
        """The tensors an inference request gives; by default one BYTES element
        per input, each the input as JSON text."""
        return [TensorSpec("input", BYTES, (-1,))]

    def tensor_outputs(self) -> list[TensorSpec]:
        return [TensorSpec("output", BYTES, (-1,))]

    def items_from_tensors(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> list[Any]:
        """The request's tensors as wire items, one per row."""
        ((name, tensor),) = self.expect_tensors(tensors, field).items()
        items = []
        for i, raw in enumerate(byte_strings(tensor, f"{field}.{name}")):
            try:
                items.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                raise invalid(f"{field}.{name}[{i}]", "each element is one input as JSON text") from None
        return items

    def tensors_from_results(self, results: list[Any], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """The results as response tensors; by default each output as JSON text."""
        return {"output": utf8([orjson.dumps(self.encode(r, d, parameters)).decode() for r, d in zip(results, decoded)])}

    def expect_tensors(
        self, tensors: dict[str, np.ndarray], field: str, names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The request's tensors by the names this task reads, checked: none
        missing, none unknown (a 422 names them). A model of one input tensor
        takes a request of one tensor under any name, as MLServer does."""
        names = names or [spec.name for spec in self.tensor_inputs()]
        if len(names) == 1 and len(tensors) == 1:
            return {names[0]: next(iter(tensors.values()))}
        missing = [n for n in names if n not in tensors]
        unknown = sorted(set(tensors) - set(names))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else []
            )
            raise invalid(field, f"model {self.model.name!r} takes the tensors {', '.join(names)} ({'; '.join(problems)})")
        return {name: tensors[name] for name in names}

    # --- inputs from files (background jobs) ------------------------------

    def item_from_file(self, data: bytes, field: str) -> Any:
        """An uploaded file (a zip member) as one input item (tasks with ``takes_files``)."""
        raise invalid(field, f"a file cannot be an input of model {self.model.name!r} ({self.name})")

    def item_from_line(self, value: Any, field: str) -> Any:
        """One JSON line of an uploaded inputs file as one input item."""
        return value
