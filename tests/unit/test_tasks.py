"""Each task on its own: decode (with limits, errors naming the field), encode,
the prediction cache's round trip, and the registry that finds tasks."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from adapters.base import ModelAdapter
from adapters.manifest import Manifest
from serving.errors import InvalidInput, ModelLoadError, PayloadTooLarge, ValidationFailed
from tasks import BUILTIN_TASKS, Limits, build_task, task_class
from tasks.custom import CustomTask
from tasks.detection import DetectionParameters, ObjectDetection
from tasks.fields import Base64Image
from tasks.image import ImageClassification
from tasks.results import Answer, Classification, Detection, Entity, Regression
from tasks.tabular import STRING, Feature, TabularClassification, TabularRegression
from tasks.text import QuestionAnswering, TextClassification, TextEmbedding, TokenClassification
from utils_serve import ImageLimits

LIMITS = Limits(image=ImageLimits(max_bytes=100_000, max_pixels=1_000_000, formats=("PNG", "JPEG")), max_text_chars=50)


class Stub(ModelAdapter):
    """An adapter that is never called: the tasks only read its manifest and features."""

    tasks = tuple(BUILTIN_TASKS)

    def load(self) -> None:
        pass

    def predict(self, batch):
        raise AssertionError("not called")


def model(task: str = "text-classification", features: list[Feature] | None = None, **manifest: Any) -> Stub:
    stub = Stub(Manifest(name="m", task=task, adapter="stub", **manifest), Path("."))
    stub.features = features or []
    return stub


def png(width: int = 4, height: int = 3) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def fields_of(error: ValidationFailed) -> list[str]:
    return [d["field"] for d in error.details]


def round_trip(task, result):
    """What a cache hit gives back: the stored JSON-ready value, loaded."""
    import orjson

    return task.load(orjson.loads(orjson.dumps(task.dump(result))))


# --- text ------------------------------------------------------------------------------


def test_text_decode_checks_type_blank_and_length():
    task = TextClassification(model())
    params = task.parameters(None)
    assert task.decode("a fine film", params, LIMITS, "inputs[0]").value == "a fine film"
    for item, message in ((5, "valid string"), ("   ", "empty"), ("x" * 51, "longer than 50")):
        with pytest.raises(ValidationFailed) as caught:
            task.decode(item, params, LIMITS, "inputs[3]")
        assert fields_of(caught.value) == ["inputs[3]"] and message in caught.value.message


def test_text_classification_encodes_rounded_scores_and_round_trips():
    task = TextClassification(model())
    result = Classification("fresh", {"fresh": 0.91234567, "rotten": 0.08765433})
    assert task.encode(result, None, None) == {"category": "fresh", "scores": {"fresh": 0.912346, "rotten": 0.087654}}
    assert round_trip(task, result) == result


def test_text_embedding_round_trips_numpy_floats():
    task = TextEmbedding(model("text-embedding"))
    vector = list(np.array([0.1234567, -0.5], dtype=np.float32))
    assert task.encode(round_trip(task, vector), None, None) == {"embedding": [0.123457, -0.5]}


def test_token_classification_encodes_entities_and_round_trips():
    task = TokenClassification(model("token-classification"))
    entities = [Entity("PER", 0.9876543, 0, 3, "Ann")]
    assert task.encode(entities, None, None) == {
        "entities": [{"label": "PER", "score": 0.987654, "start": 0, "end": 3, "text": "Ann"}]
    }
    assert round_trip(task, entities) == entities


def test_question_answering_validates_both_texts_and_keys_on_both():
    task = QuestionAnswering(model("question-answering"))
    params = task.parameters(None)
    one = task.decode({"question": "where?", "context": "in Berlin"}, params, LIMITS, "inputs[0]")
    other = task.decode({"question": "who?", "context": "in Berlin"}, params, LIMITS, "inputs[0]")
    assert one.value.context == "in Berlin" and one.key != other.key
    with pytest.raises(ValidationFailed) as caught:
        task.decode({"question": "where?", "colour": "red"}, params, LIMITS, "inputs[1]")
    assert fields_of(caught.value) == ["inputs[1].context", "inputs[1].colour"]
    with pytest.raises(ValidationFailed) as caught:
        task.decode({"question": "where?", "context": "x" * 51}, params, LIMITS, "inputs[1]")
    assert fields_of(caught.value) == ["inputs[1].context"]
    answer = Answer("Berlin", 0.5, 3, 9)
    assert task.encode(answer, None, None) == {"answer": "Berlin", "score": 0.5, "start": 3, "end": 9}
    assert round_trip(task, answer) == answer


def test_a_task_without_parameters_refuses_any():
    task = TextClassification(model())
    with pytest.raises(ValidationFailed) as caught:
        task.parameters({"maxResults": 3})
    assert fields_of(caught.value) == ["parameters.maxResults"]
    assert task.cache_options(task.parameters({})) == ""


# --- images ---------------------------------------------------------------------------


def test_image_decode_from_base64_or_bytes_names_the_field_on_errors():
    task = ImageClassification(model("image-classification"))
    params = task.parameters(None)
    decoded = task.decode(base64.b64encode(png()).decode(), params, LIMITS, "inputs[0]")
    assert decoded.value.size == (4, 3) and decoded.value.mode == "RGB"
    assert task.decode(png(), params, LIMITS, "frame").key == decoded.key  # the file's digest either way
    with pytest.raises(InvalidInput) as caught:
        task.decode("not base64!", params, LIMITS, "inputs[2]")
    assert [d["field"] for d in caught.value.details] == ["inputs[2]"]
    with pytest.raises(PayloadTooLarge) as caught:
        task.decode(base64.b64encode(b"\0" * 200_000).decode(), params, LIMITS, "inputs[0]")
    assert [d["field"] for d in caught.value.details] == ["inputs[0]"]
    with pytest.raises(ValidationFailed):
        task.decode({"image": "x"}, params, LIMITS, "inputs[0]")
    # Jobs check images cheaply at submit; decoding is the worker's.
    task.check("not base64 either, decoded later", params, LIMITS, "inputs[0]")
    assert base64.b64decode(task.item_from_file(png(), "inputs a.png")) == png()
    assert task.item_from_line({"image": "abc"}, "line 1") == "abc"


def test_image_classification_round_trips():
    task = ImageClassification(model("image-classification"))
    result = Classification("tabby", {"tabby": 0.7, "tiger cat": 0.2})
    assert round_trip(task, result) == result


def test_detection_parameters_apply_in_finish_and_key_the_cache():
    task = ObjectDetection(model("object-detection"))
    decoded = task.decode(png(100, 50), task.parameters(None), LIMITS, "frame")
    candidates = [
        Detection("face", 0.9, 0, 0, 40, 40),
        Detection("face", 0.8, 1, 0, 41, 40),  # overlaps the first: suppressed
        Detection("face", 0.2, 60, 0, 90, 30),  # below the default score threshold
    ]
    kept = task.finish(candidates, decoded, task.parameters(None))
    assert kept == [candidates[0]]
    everything = task.parameters({"score_th": 0.0, "nms_iou": 1.0})
    assert len(task.finish(candidates, decoded, everything)) == 3
    assert task.cache_options(everything) != task.cache_options(task.parameters(None))
    (obj,) = task.encode(kept, decoded, task.parameters(None))["objects"]
    assert obj["normalizedBox"] == {"x": 0.0, "y": 0.0, "width": 0.4, "height": 0.8}
    assert round_trip(task, kept) == kept
    with pytest.raises(ValidationFailed) as caught:
        task.parameters({"score_th": 2, "maxResult": 3})
    assert fields_of(caught.value) == ["parameters.score_th", "parameters.maxResult"]
    assert task.parameters(DetectionParameters(maxResults=2)).maxResults == 2


# --- tabular ---------------------------------------------------------------------------

FEATURES = [
    Feature("age"),
    Feature("bmi", nullable=True),
    Feature("plan", STRING, categories=("basic", "pro")),
    Feature("city", STRING, nullable=True),
]


def test_a_record_is_validated_against_the_models_features():
    task = TabularClassification(model("tabular-classification", FEATURES))
    params = task.parameters(None)
    decoded = task.decode({"age": 41, "bmi": None, "plan": "pro", "city": "Lyon"}, params, LIMITS, "inputs[0]")
    assert decoded.value == (41.0, None, "pro", "Lyon")
    bad = {"age": "41", "plan": "gold", "city": None, "colour": "red"}
    with pytest.raises(ValidationFailed) as caught:
        task.decode(bad, params, LIMITS, "inputs[4]")
    assert fields_of(caught.value) == ["inputs[4].age", "inputs[4].bmi", "inputs[4].plan", "inputs[4].colour"]
    with pytest.raises(ValidationFailed) as caught:  # null where the model takes no missing value
        task.decode({"age": None, "bmi": 1.0, "plan": "pro", "city": None}, params, LIMITS, "inputs[0]")
    assert fields_of(caught.value) == ["inputs[0].age"]
    with pytest.raises(ValidationFailed):  # a boolean is no number
        task.decode({"age": True, "bmi": 1.0, "plan": "pro", "city": None}, params, LIMITS, "inputs[0]")


def test_record_keys_do_not_depend_on_field_order():
    task = TabularRegression(model("tabular-regression", FEATURES[:2]))
    params = task.parameters(None)
    one = task.decode({"age": 1, "bmi": 2.5}, params, LIMITS, "x")
    two = task.decode({"bmi": 2.5, "age": 1}, params, LIMITS, "x")
    assert one.key == two.key and one.key != task.decode({"age": 1, "bmi": 2.6}, params, LIMITS, "x").key


def test_a_record_schema_and_example_name_the_features():
    task = TabularClassification(model("tabular-classification", FEATURES))
    schema = task.item_type.model_json_schema()
    assert list(schema["properties"]) == ["age", "bmi", "plan", "city"]
    assert schema["properties"]["plan"]["enum"] == ["basic", "pro"] and schema["additionalProperties"] is False
    assert task.example() == {"age": 0.0, "bmi": 0.0, "plan": "basic", "city": "a"}
    manifest_example = {"age": 30, "bmi": 21.5, "plan": "pro", "city": None}
    assert TabularClassification(model("tabular-classification", FEATURES, example=manifest_example)).example() == manifest_example


def test_a_tabular_task_needs_features():
    with pytest.raises(ValueError, match="needs its features"):
        TabularClassification(model("tabular-classification"))


def test_tabular_outputs_encode_and_round_trip():
    classes = TabularClassification(model("tabular-classification", FEATURES))
    with_scores, label_only = Classification("yes", {"yes": 0.75, "no": 0.25}), Classification("no")
    assert classes.encode(with_scores, None, None) == {"category": "yes", "scores": {"yes": 0.75, "no": 0.25}}
    assert classes.encode(label_only, None, None) == {"category": "no"}
    assert round_trip(classes, with_scores) == with_scores and round_trip(classes, label_only) == label_only
    values = TabularRegression(model("tabular-regression", FEATURES))
    one, several = Regression(value=152.13348000000001), Regression(values=(1.5, -2.0))
    assert values.encode(one, None, None) == {"value": 152.13348000000001}  # not rounded
    assert values.encode(several, None, None) == {"values": [1.5, -2.0]}
    assert round_trip(values, one) == one and round_trip(values, several) == several


def test_a_non_finite_model_output_is_a_422_not_a_null():
    values = TabularRegression(model("tabular-regression", FEATURES))
    with pytest.raises(ValidationFailed, match="non-finite"):
        values.finish(Regression(value=float("inf")), None, None)
    classes = TabularClassification(model("tabular-classification", FEATURES))
    with pytest.raises(ValidationFailed):
        classes.finish(Classification("a", {"a": float("nan"), "b": 0.5}), None, None)


# --- custom ---------------------------------------------------------------------------


class Shape(BaseModel):
    image: Base64Image
    label: str


class Size(BaseModel):
    width: int
    height: int


class Sizer(Stub):
    tasks = ()
    Input = Shape
    Output = Size


def test_a_custom_task_validates_its_input_and_decodes_images():
    task = CustomTask(Sizer(Manifest(name="sizer", task="measure", adapter="x"), Path(".")))
    params = task.parameters(None)
    item = {"label": "a", "image": base64.b64encode(png(7, 5)).decode()}
    decoded = task.decode(item, params, LIMITS, "inputs[0]")
    assert decoded.value.image.size == (7, 5) and decoded.value.label == "a"
    assert task.decode(dict(reversed(item.items())), params, LIMITS, "inputs[0]").key == decoded.key
    with pytest.raises(ValidationFailed) as caught:
        task.decode({"label": 5}, params, LIMITS, "inputs[1]")
    assert fields_of(caught.value) == ["inputs[1].image", "inputs[1].label"]
    with pytest.raises(InvalidInput) as caught:
        task.decode({"label": "a", "image": "!!"}, params, LIMITS, "inputs[2]")
    assert [d["field"] for d in caught.value.details] == ["inputs[2]"]


def test_a_custom_task_checks_what_the_adapter_returns():
    task = CustomTask(Sizer(Manifest(name="sizer", task="measure", adapter="x"), Path(".")))
    assert task.finish(Size(width=1, height=2), None, None) == {"width": 1, "height": 2}
    assert task.finish({"width": 3, "height": 4}, None, None) == {"width": 3, "height": 4}
    with pytest.raises(TypeError, match="not its Output"):
        task.finish({"width": "wide"}, None, None)
    assert task.name == "measure" and task.Output is Size


# --- the registry -----------------------------------------------------------------------


def test_task_class_checks_what_the_adapter_serves(tmp_path):
    manifest = Manifest(name="m", task="tabular-regression", adapter="stub")
    assert task_class(manifest, Stub, tmp_path) is TabularRegression

    class TextOnly(Stub):
        tasks = ("text-classification",)

    with pytest.raises(ModelLoadError, match="serves text-classification, manifest says 'tabular-regression'"):
        task_class(manifest, TextOnly, tmp_path)
    with pytest.raises(ModelLoadError, match="unknown task 'tabular-regresion'"):
        task_class(Manifest(name="m", task="tabular-regresion", adapter="stub"), TextOnly, tmp_path)
    # Own types need a task name of their own.
    assert task_class(Manifest(name="m", task="measure", adapter="x"), Sizer, tmp_path) is CustomTask
    with pytest.raises(ModelLoadError, match="its task needs a name of its own"):
        task_class(Manifest(name="m", task="image-classification", adapter="x"), Sizer, tmp_path)


def test_a_manifest_may_name_a_task_class_in_the_folder(tmp_path):
    (tmp_path / "model.py").write_text(
        "from tasks.text import TextClassification\n"
        "class Shouting(TextClassification):\n"
        "    name = 'shouting'\n"
        "    def encode(self, result, decoded, parameters):\n"
        "        return {'category': result.label.upper()}\n"
    )

    class Shouter(Stub):
        tasks = ("shouting",)

    cls = task_class(Manifest(name="m", task="model:Shouting", adapter="x"), Shouter, tmp_path)
    assert cls.name == "shouting" and cls.encode(None, Classification("yes"), None, None) == {"category": "YES"}
    with pytest.raises(ModelLoadError, match="is not a tasks.Task subclass"):
        task_class(Manifest(name="m", task="tasks.base:Limits", adapter="x"), Shouter, tmp_path)


def test_a_manifest_example_that_does_not_validate_stops_the_load():
    adapter = model("tabular-regression", FEATURES[:1], example={"age": "old"})
    with pytest.raises(ModelLoadError, match=r"example is not a valid input: example.age: Input should be a valid number"):
        build_task(TabularRegression, adapter)


def test_a_custom_task_without_an_example_gets_the_smallest_valid_input():
    from pydantic import Field

    class Window(BaseModel):
        values: list[float] = Field(min_length=3)
        label: str = "x"

    class Counter(Stub):
        tasks = ()
        Input = Window
        Output = Size

    task = CustomTask(Counter(Manifest(name="c", task="count", adapter="x"), Path(".")))
    assert task.example() == {"values": [0.0, 0.0, 0.0]}
    images = CustomTask(Sizer(Manifest(name="s", task="measure", adapter="x"), Path(".")))
    example = images.example()
    assert set(example) == {"image", "label"}
    images.decode(example, images.parameters(None), LIMITS, "example")  # a real, decodable image
    declared = CustomTask(Sizer(Manifest(name="s", task="measure", adapter="x", example={"label": "y"}), Path(".")))
    assert declared.example() == {"label": "y"}
