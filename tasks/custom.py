"""A task an adapter defines by its own input and output types.

An adapter class (typically in a model folder's ``model.py``) that sets
``Input`` and ``Output`` (pydantic models, or any type pydantic validates)
serves a task of its own: the manifest's ``task`` names it. Inputs are
validated against ``Input`` (strictly; ``tasks.fields.Base64Image`` fields
arrive as checked PIL images) before the adapter's ``preprocess``; what the
adapter returns is validated against ``Output``, so the API never answers
outside its own schema. Both types appear in the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from serving.errors import ServeError
from tasks.base import Decoded, Limits, Task, canonical_json, name_field, schema_error
from tasks.fields import LIMITS_CONTEXT


def declares_types(adapter_cls: type) -> bool:
    """Whether an adapter class defines its own ``Input`` and ``Output``."""
    return getattr(adapter_cls, "Input", None) is not None and getattr(adapter_cls, "Output", None) is not None


class CustomTask(Task):
    """The task of an adapter with its own ``Input`` and ``Output``."""

    name = "custom"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.name = model.manifest.task
        self.item_type = model.Input
        self.Output = model.Output
        self._input = TypeAdapter(model.Input)
        self._output = TypeAdapter(model.Output)

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        try:
            value = self._input.validate_python(item, strict=True, context={LIMITS_CONTEXT: limits.image})
        except ValidationError as error:
            raise schema_error(error, field) from None
        except ServeError as error:  # an image field that cannot be read
            raise name_field(error, field) from None
        try:
            key: bytes | str = canonical_json(item)
        except TypeError:  # raw bytes from an internal caller
            key = repr(item)
        return Decoded(value, key)

    def default_example(self) -> Any:
        """The first of ``Input``'s JSON-schema examples, else the smallest input
        its schema allows, if that validates (a base64 image is a 1x1 PNG)."""
        schema = self._input.json_schema()
        if schema.get("examples"):
            return schema["examples"][0]
        candidate = example_of(schema, schema.get("$defs", {}))
        try:
            self._input.validate_python(candidate, strict=True, context={LIMITS_CONTEXT: Limits.defaults().image})
        except (ValidationError, ServeError):
            return None
        return candidate

    def finish(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        # Checked before it is cached: an adapter that answers outside its own
        # Output is a server bug (500, logged), never a malformed 200.
        try:
            checked = self._output.validate_python(result)
        except ValidationError as error:
            raise TypeError(
                f"model {self.model.name!r} returned an output that is not its Output: {error.errors()[0]['msg']}"
            ) from None
        return orjson.loads(self._output.dump_json(checked))

    def encode(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        return result


def example_of(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """The smallest value a JSON schema allows, as far as this can tell: every
    required property, the fewest array items, the lowest number in range."""
    from tasks.image import EXAMPLE_IMAGE

    if depth > 20:
        return None
    if "$ref" in schema:
        return example_of(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "object":
        return {
            name: example_of(sub, defs, depth + 1)
            for name, sub in schema.get("properties", {}).items()
            if name in schema.get("required", ())
        }
    if kind == "array":
        return [example_of(schema.get("items", {}), defs, depth + 1) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind == "string":
        if schema.get("format") == "byte" or schema.get("contentEncoding") == "base64":
            return EXAMPLE_IMAGE
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("number", "integer"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(low, 0) if schema.get("maximum", float("inf")) >= 0 else schema["maximum"]
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = schema["exclusiveMinimum"] + 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    return None
