"""The OpenAPI operations of each served model, from its task.

``POST /v1/models/{name}/predict`` takes any model's inputs, so its own schema
can only say "a list of inputs". Beside it the document gets one operation
per served model (``/v1/models/iris/predict`` ...) whose request and response
bodies are that model's task schemas (a tabular model's own record, a custom
model's own ``Input`` and ``Output``) with a ready example body, so Swagger's
"Try it out" and a Postman import send a body that works. The generic
operation lists the same examples, one per model.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, TypeAdapter

from predict import ModelRegistry
from tasks.base import Task

REF = "#/components/schemas/{model}"
GENERIC_PATH = "/v1/models/{name}/predict"


class Components:
    """Schemas collected into ``components/schemas``, each once under a unique name."""

    def __init__(self, existing: dict[str, Any]) -> None:
        self.schemas = existing

    def add(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """A ``$ref`` to ``schema`` stored as ``name`` (or ``name_2`` ... when another schema has that name)."""
        candidate, n = name, 1
        while candidate in self.schemas and self.schemas[candidate] != schema:
            n += 1
            candidate = f"{name}_{n}"
        self.schemas[candidate] = schema
        return {"$ref": REF.format(model=candidate)}

    def of(self, kind: Any, fallback: str) -> dict[str, Any]:
        """The JSON schema of a type; models and nested models become components."""
        schema = TypeAdapter(kind).json_schema(ref_template=REF, mode="validation")
        for name, nested in schema.pop("$defs", {}).items():
            self.add(name, nested)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return self.add(kind.__name__, schema)
        return schema if schema else {"description": fallback}


def _name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", model)


def model_operation(
    name: str, task: Task, components: Components, errors: dict[str, Any], max_items: int
) -> dict[str, Any]:
    """The ``post`` operation of one model's predict path."""
    adapter = task.model
    item = components.of(task.item_type, f"One input of {task.name}.")
    parameters = components.of(task.Parameters, "Request parameters.")
    output = components.of(task.Output, f"One output of {task.name}.")
    request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "inputs": {"type": "array", "minItems": 1, "maxItems": max_items, "items": item},
            "parameters": parameters,
        },
    }
    response = {
        "type": "object",
        "required": ["model", "version", "task", "outputs"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "task": {"type": "string"},
            "outputs": {"type": "array", "items": output},
        },
    }
    description = adapter.manifest.description or f"The {name} model."
    if adapter.labels and len(adapter.labels) <= 50:
        description += "\n\nLabels: " + ", ".join(f"`{label}`" for label in adapter.labels) + "."
    return {
        "post": {
            "summary": f"{name}: {task.name}",
            "description": description,
            "operationId": f"predict_{_name(name)}",
            "tags": ["models"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": components.add(f"Predict_{_name(name)}_Request", request),
                        "example": example_body(task),
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": components.add(f"Predict_{_name(name)}_Response", response)}},
                },
                **json.loads(json.dumps(errors)),  # copies: the YAML file gets no anchors
            },
        }
    }


def example_body(task: Task) -> dict[str, Any]:
    return {"inputs": [task.example()]}


def add_model_operations(document: dict[str, Any], registry: ModelRegistry, max_items: int) -> dict[str, Any]:
    """The document with an operation per loaded model and the generic operation's examples."""
    document = json.loads(json.dumps(document))
    generic = document["paths"][GENERIC_PATH]["post"]
    errors = {code: answer for code, answer in generic["responses"].items() if code != "200"}
    components = Components(document.setdefault("components", {}).setdefault("schemas", {}))
    examples = {}
    paths = {}
    for adapter in sorted(registry, key=lambda a: a.name):
        task = registry.task(adapter.name)
        paths[GENERIC_PATH.replace("{name}", adapter.name)] = model_operation(
            adapter.name, task, components, errors, max_items
        )
        examples[adapter.name] = {"summary": f"{adapter.name} ({task.name})", "value": example_body(task)}
    if examples:
        generic["requestBody"]["content"]["application/json"]["examples"] = examples
    document["paths"].update(paths)
    return document
