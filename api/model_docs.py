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

from api.examples import Example, operation_examples
from predict import ModelRegistry
from serving.settings import Settings
from tasks import OBJECT_DETECTION, TEXT_EMBEDDING
from tasks.base import Task
from tasks.text import EXAMPLE_TEXT, TEXT_SCHEMA

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


def add_model_operations(document: dict[str, Any], registry: ModelRegistry, settings: Settings) -> dict[str, Any]:
    """The document with an operation per loaded model, the generic operation's
    examples, and what the served models decide of the other routes' bodies."""
    document = json.loads(json.dumps(document))
    generic = document["paths"][GENERIC_PATH]["post"]
    errors = {code: answer for code, answer in generic["responses"].items() if code != "200"}
    components = Components(document.setdefault("components", {}).setdefault("schemas", {}))
    given = operation_examples(registry, settings)
    examples = {}
    paths = {}
    jobs = {}
    for adapter in sorted(registry, key=lambda a: a.name):
        task = registry.task(adapter.name)
        operation = model_operation(adapter.name, task, components, errors, settings.max_batch_items)
        jobs[adapter.name] = _job_variant(adapter.name, components, operation, settings.job_max_inputs)
        if task.jobs_only:  # its predict route answers 422 jobs_only: documented as a job body only
            continue
        paths[GENERIC_PATH.replace("{name}", adapter.name)] = operation
        examples[adapter.name] = {"summary": f"{adapter.name} ({task.name})", "value": example_body(task)}
    if examples:  # the path's example model first: what a client sends as it is
        first = given["predict"].parameters["name"]
        examples = {name: examples[name] for name in _first(examples, first)}
        generic["requestBody"]["content"]["application/json"]["examples"] = examples
    document["paths"].update(paths)
    _served_values(document, registry, settings, components, jobs, given["submitJob"].body["model"])
    _examples(document, given)
    _multipart_parts(document)
    _job_links(document)
    return document


def _job_variant(name: str, components: Components, operation: dict[str, Any], max_inputs: int) -> dict[str, Any]:
    """``POST /v1/jobs``'s body for one model: its name and its predict operation's inputs."""
    request = operation["post"]["requestBody"]["content"]["application/json"]["schema"]
    properties = components.schemas[request["$ref"].rsplit("/", 1)[-1]]["properties"]
    body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "inputs"],
        "properties": {
            "model": {"const": name},
            "inputs": {**properties["inputs"], "maxItems": max_inputs},
            "parameters": properties["parameters"],
        },
    }
    return components.add(f"Job_{_name(name)}_Request", body)


def _job_example(registry: ModelRegistry, name: str, first: str) -> dict[str, Any]:
    if name == first:
        return {"model": name, "inputs": [EXAMPLE_TEXT, "a dull, lifeless remake"]}
    return {"model": name, "inputs": [registry.task(name).example()]}


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"].get(name, {"properties": {}})


def _first(names, first: str) -> list[str]:
    """``names`` sorted, ``first`` ahead of the others: the example a client sends as it is."""
    return sorted(names, key=lambda name: (name != first, name))


def _served_values(
    document: dict[str, Any],
    registry: ModelRegistry,
    settings: Settings,
    components: Components,
    jobs: dict[str, Any],
    job_model: str,
) -> None:
    """The values the served models take, where a route's own model cannot know
    them: detection labels, embedding sizes, forecast horizons, the ensemble's
    inputs, the image sizes of the book's text-to-image body, and the job body
    of each model."""
    schemas = document["components"]["schemas"]
    labels = sorted({label for a in registry if registry.task(a.name).name == OBJECT_DETECTION for label in a.labels})
    if labels:
        for name in [n for n in schemas if n.startswith("DetectionParameters")] + ["FlatPredictRequest"]:
            field = schemas.get(name, {}).get("properties", {}).get("type")
            if field is not None:
                field["anyOf"] = [{"enum": labels}, {"type": "null"}]
    dims = sorted({a.dim for a in registry if registry.task(a.name).name == TEXT_EMBEDDING and getattr(a, "dim", 0)})
    embedding = _schema(document, "EmbeddingsRequest")["properties"]
    if dims and "dimensions" in embedding:
        embedding["dimensions"]["anyOf"] = [{"enum": dims}, {"type": "null"}]
    if "input" in embedding:
        texts = {"type": "array", "minItems": 1, "maxItems": settings.max_batch_items, "items": TEXT_SCHEMA}
        embedding["input"] = {**embedding["input"], "oneOf": [TEXT_SCHEMA, texts]}
    names = {a.name for a in registry}
    forecaster = registry.get(settings.forecast_model) if settings.forecast_model in names else None
    horizon = getattr(forecaster, "max_horizon", 0)
    for parameter in document["paths"].get("/forecast", {}).get("get", {}).get("parameters", []):
        if parameter["name"] == "forecast_days" and horizon:
            parameter["schema"]["maximum"] = horizon
    ensemble = settings.recommendation_ensemble
    recommendation = _schema(document, "RecommendationRequest")["properties"]
    if ensemble in names and "input" in recommendation:
        item = components.of(registry.task(ensemble).item_type, "One input of the ensemble.")
        # No default beside the item's schema: null (absent) is not a text.
        kept = {k: v for k, v in recommendation["input"].items() if k != "default"}
        recommendation["input"] = {**kept, **item}
        recommendation["parameters"] = {
            "anyOf": [components.of(registry.task(ensemble).Parameters, "The ensemble's parameters."), {"type": "null"}]
        }
        recommendation["inputs"] = {
            **recommendation["inputs"],
            "anyOf": [{"type": "array", "minItems": 1, "maxItems": settings.max_batch_items, "items": item}, {"type": "null"}],
        }
    drawer = settings.image_generation_model
    options = getattr(registry.task(drawer), "options", None) if drawer in names else None
    book = _schema(document, "ImageGenerationInput").get("properties", {})
    if options is not None:  # the book's body takes the sizes its model draws
        size = {"type": "integer", "minimum": options.min_size, "maximum": options.max_size,
                "multipleOf": options.size_multiple}
        for name in ("width", "height"):
            if name in book:
                book[name] = {**book[name], "anyOf": [dict(size), {"type": "null"}]}
    body = document["paths"].get("/v1/jobs", {}).get("post", {}).get("requestBody", {}).get("content", {})
    if jobs and "application/json" in body:
        body["application/json"]["schema"] = {
            "oneOf": list(jobs.values()),
            "discriminator": {"propertyName": "model", "mapping": {name: ref["$ref"] for name, ref in jobs.items()}},
        }
        # One example per model, the default classifier's first (what Postman sends).
        body["application/json"]["examples"] = {
            name: {"summary": f"{name} ({registry.task(name).name})", "value": _job_example(registry, name, job_model)}
            for name in _first(jobs, job_model)
        }


def _operations(document: dict[str, Any]):
    for operations in document["paths"].values():
        for operation in operations.values():
            yield operation


def _examples(document: dict[str, Any], examples: dict[str, Example]) -> None:
    """Each operation's example on its body and its parameters (every body is required)."""
    for operation in _operations(document):
        if "requestBody" in operation:
            operation["requestBody"]["required"] = True
        example = examples.get(operation.get("operationId", ""))
        if example is None:
            continue
        for parameter in operation.get("parameters", []):
            if parameter["name"] in example.parameters:
                parameter["example"] = example.parameters[parameter["name"]]
        content = operation.get("requestBody", {}).get("content", {})
        if example.body is not None:
            for media_type in ("application/json", "multipart/form-data"):
                if media_type in content and "examples" not in content[media_type]:
                    content[media_type]["example"] = example.body


def _multipart_parts(document: dict[str, Any]) -> None:
    """Multipart bodies with their required parts and each part's media type."""
    for operation in _operations(document):
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        if form is None:
            continue
        operation["requestBody"]["required"] = True
        schema = form["schema"]
        properties = schema.get("properties", {})
        schema["required"] = [
            name for name in properties if name in ("image", "inputs", "model")
        ]
        schema["additionalProperties"] = False
        encoding = {}
        example = form.get("example") or {}
        for name, value in example.items():  # Postman reads a form's examples per part
            if name in properties:
                properties[name]["example"] = value
        if "image" in properties:
            properties["image"]["description"] = "The image file (JPEG, PNG, ...)."
            encoding["image"] = {"contentType": "image/*"}
        if "inputs" in properties:
            properties["inputs"]["description"] = "JSON lines (one input per line) or, for image models, a zip of images."
            encoding["inputs"] = {"contentType": "application/x-ndjson, application/zip"}
        if "parameters" in properties:
            encoding["parameters"] = {"contentType": "application/json"}
        form["encoding"] = encoding


def _job_links(document: dict[str, Any]) -> None:
    """Where a job id comes from: the submit answers' ``id`` (OpenAPI links)."""
    links = {
        target: {"operationId": target, "parameters": {"job_id": "$response.body#/id"}}
        for target in ("getJob", "jobResult", "cancelJob")
    }
    for path in ("/v1/jobs", "/v1/jobs/upload"):
        responses = document["paths"].get(path, {}).get("post", {}).get("responses", {})
        for code in ("200", "202"):
            if code in responses:
                responses[code]["links"] = json.loads(json.dumps(links))
    # The book's image rows: their id, and the job behind them.
    rows = {
        target: {"operationId": target, "parameters": {"image_id": "$response.body#/id"}}
        for target in ("getGeneratedImage", "getGeneratedImageUrl")
    }
    rows["getJob"] = {"operationId": "getJob", "parameters": {"job_id": "$response.body#/job_id"}}
    responses = document["paths"].get("/generated-images", {}).get("post", {}).get("responses", {})
    for code in ("200", "201"):
        if code in responses:
            responses[code]["links"] = json.loads(json.dumps(rows))
    responses = document["paths"].get("/image-generation", {}).get("post", {}).get("responses", {})
    for code in ("200", "202"):
        if code in responses:
            responses[code]["links"] = {"getJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/task_id"}}}
