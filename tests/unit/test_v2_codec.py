"""The Open Inference Protocol's wire format (JSON and binary tensor data) and
each task's tensors, against hand-computed cases and tritonclient's own encoder."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from api import v2_codec as codec
from serving.errors import InvalidInput, ValidationFailed
from tasks.base import Decoded
from tasks.detection import ObjectDetection
from tasks.results import Classification, Detection, Regression
from tasks.tabular import NUMBER, STRING, Feature, TabularClassification, TabularRegression
from tasks.text import QuestionAnswering, TextClassification, TextEmbedding
from tests.unit.test_tasks import model


def body(inputs, **extra) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def test_json_tensors_flat_or_nested_with_their_dtypes():
    request = codec.parse(body([
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
        {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
        {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["x", "é"]},
        {"name": "d", "shape": [1], "datatype": "BOOL", "data": [True]},
    ]), None)
    a, b, c, d = (request.tensors[k] for k in "abcd")
    assert a.dtype == np.float32 and a.tolist() == [[1, 2], [3, 4.5]]
    assert b.dtype == np.int64 and c.tolist() == [b"x", "é".encode()] and d.tolist() == [True]


@pytest.mark.parametrize(
    "tensor, field",
    [
        ({"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}, "inputs[0].data"),  # wrong count
        ({"name": "a", "shape": [1], "datatype": "INT32", "data": [1.5]}, "inputs[0].data"),  # not an integer
        ({"name": "a", "shape": [1], "datatype": "INT8", "data": [300]}, "inputs[0].data"),  # does not fit
        ({"name": "a", "shape": [1], "datatype": "BYTES", "data": [5]}, "inputs[0].data"),  # not a string
        ({"name": "a", "shape": [1], "datatype": "FP32", "data": ["1"]}, "inputs[0].data"),
        ({"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}, "inputs[0].shape"),
        ({"name": "a", "shape": [2], "datatype": "FP32", "data": [[1, 2], [3]]}, "inputs[0].data"),  # ragged
        ({"name": "a", "shape": [1], "datatype": "FP64"}, "inputs[0].data"),  # no data, no binary
        ({"name": "a", "shape": [1], "datatype": "COMPLEX", "data": [1]}, "inputs[0].datatype"),
    ],
)
def test_bad_tensors_are_422_naming_the_field(tensor, field):
    with pytest.raises(ValidationFailed) as caught:
        codec.parse(body([tensor]), None)
    assert field in [d["field"] for d in caught.value.details]


def test_a_request_that_is_no_json_or_whose_header_does_not_fit_is_400():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        codec.parse(b"{nope", None)
    with pytest.raises(InvalidInput, match="Inference-Header-Content-Length is 99"):
        codec.parse(b"{}", "99")
    with pytest.raises(InvalidInput, match="must be a number"):
        codec.parse(b"{}", "ten")


def binary_body(inputs: list[tuple[dict, bytes]], **extra) -> tuple[bytes, str]:
    head = orjson.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": len(data)}} for spec, data in inputs], **extra})
    return head + b"".join(data for _, data in inputs), str(len(head))


def test_binary_tensors_numbers_and_bytes():
    numbers = np.array([[1.5, -2.0], [3.25, 4.0]], dtype="<f8")
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", b"\xff\x00"))
    data, length = binary_body([
        ({"name": "x", "shape": [2, 2], "datatype": "FP64"}, numbers.tobytes()),
        ({"name": "s", "shape": [3], "datatype": "BYTES"}, strings),
    ])
    request = codec.parse(data, length)
    assert request.tensors["x"].tolist() == numbers.tolist()
    assert request.tensors["s"].tolist() == [b"ab", b"", b"\xff\x00"]
    with pytest.raises(ValidationFailed, match="BYTES data ends inside an element"):
        data, length = binary_body([({"name": "s", "shape": [1], "datatype": "BYTES"}, struct.pack("<I", 9) + b"abc")])
        codec.parse(data, length)
    with pytest.raises(ValidationFailed, match="16 bytes of binary data for 3 FP64 elements"):
        data, length = binary_body([({"name": "x", "shape": [3], "datatype": "FP64"}, numbers.tobytes()[:16])])
        codec.parse(data, length)
    with pytest.raises(InvalidInput, match="bytes of binary data belong to no input"):
        data, length = binary_body([({"name": "x", "shape": [2, 2], "datatype": "FP64"}, numbers.tobytes())])
        codec.parse(data + b"extra", length)


def test_what_tritonclient_encodes_is_read_back():
    import tritonclient.http as httpclient

    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"one", "två".encode()], dtype=object), binary_data=True)
    matrix = httpclient.InferInput("features", [1, 3], "FP32")
    matrix.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32), binary_data=False)
    outputs = [httpclient.InferRequestedOutput("label", binary_data=True), httpclient.InferRequestedOutput("scores", binary_data=False)]
    data, length = httpclient.InferenceServerClient.generate_request_body([text, matrix], outputs=outputs, request_id="r1")
    request = codec.parse(data, str(length))
    assert request.tensors["text"].tolist() == [b"one", "två".encode()]
    assert request.tensors["features"].tolist() == [[1, 2, 3]] and request.id == "r1"
    assert request.outputs == {"label": True, "scores": False}


def test_responses_in_json_or_binary_as_asked_and_tritonclient_reads_them():
    import tritonclient.http as httpclient

    tensors = {"label": np.array([b"setosa"], dtype=object), "scores": np.array([[0.9, 0.1]], dtype=np.float32)}
    plain = codec.parse(body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], id="7"), None)
    data, headers = codec.encode("iris", "1", plain, tensors)
    assert headers == {"Content-Type": "application/json"}
    answer = orjson.loads(data)
    assert answer["id"] == "7" and answer["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"]}
    binary = codec.parse(body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                              parameters={"binary_data_output": True}), None)
    data, headers = codec.encode("iris", "1", binary, tensors)
    result = httpclient.InferResult.from_response_body(data, header_length=int(headers[codec.HEADER_LENGTH]))
    assert result.as_numpy("label").tolist() == [b"setosa"] and result.as_numpy("scores").tolist() == [[pytest.approx(0.9), pytest.approx(0.1)]]
    assert headers["Content-Type"] == codec.BINARY_TYPE and binary.task_parameters == {}
    one = codec.parse(body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], outputs=[{"name": "nope"}]), None)
    with pytest.raises(ValidationFailed, match="has no output nope"):
        codec.encode("iris", "1", one, tensors)


# --- the tasks' tensors ---------------------------------------------------------------------


def test_text_tasks_read_a_bytes_tensor_under_any_single_name():
    task = TextClassification(model())
    texts = np.array([b"good", b"bad"], dtype=object)
    assert task.items_from_tensors({"text": texts}) == ["good", "bad"]
    assert task.items_from_tensors({"input-0": texts.reshape(2, 1)}) == ["good", "bad"]
    with pytest.raises(ValidationFailed, match="UTF-8"):
        task.items_from_tensors({"text": np.array([b"\xff"], dtype=object)})
    with pytest.raises(ValidationFailed, match="expected a BYTES tensor"):
        task.items_from_tensors({"text": np.array([1.0])})


def test_classification_scores_follow_the_models_labels():
    stub = model(labels=["fresh", "rotten"])
    out = TextClassification(stub).tensors_from_results(
        [Classification("rotten", {"rotten": 0.75, "fresh": 0.25})], [Decoded("x", "x")], None
    )
    assert out["label"].tolist() == [b"rotten"] and out["scores"].tolist() == [[0.25, 0.75]]


def test_embedding_question_answering_and_regression_tensors():
    vectors = TextEmbedding(model("text-embedding")).tensors_from_results([[0.1, 0.2], [0.3, 0.4]], [], None)
    assert vectors["embedding"].dtype == np.float32 and vectors["embedding"].shape == (2, 2)
    qa = QuestionAnswering(model("question-answering"))
    items = qa.items_from_tensors({"question": np.array([b"who?"], dtype=object), "context": np.array([b"Ann."], dtype=object)})
    assert items == [{"question": "who?", "context": "Ann."}]
    with pytest.raises(ValidationFailed, match="missing context"):
        qa.items_from_tensors({"question": np.array([b"who?"], dtype=object), "contexts": np.array([b"x"], dtype=object)})
    task = TabularRegression(model("tabular-regression", [Feature("a")]))
    assert task.tensors_from_results([Regression(value=1.5), Regression(value=2.0)], [], None)["value"].tolist() == [1.5, 2.0]
    assert task.tensors_from_results([Regression(values=(1.0, 2.0))], [], None)["values"].tolist() == [[1.0, 2.0]]


def test_tabular_tensors_as_one_matrix_or_one_column_per_feature():
    numeric = TabularClassification(model("tabular-classification", [Feature("a", nullable=True), Feature("b")]))
    assert [s.metadata() for s in numeric.tensor_inputs()] == [{"name": "features", "datatype": "FP64", "shape": [-1, 2]}]
    matrix = np.array([[1, 2], [np.nan, 4]], dtype=np.float32)
    assert numeric.items_from_tensors({"features": matrix}) == [{"a": 1.0, "b": 2.0}, {"a": None, "b": 4.0}]
    assert numeric.items_from_tensors({"a": np.array([1.0]), "b": np.array([[2]], dtype=np.int64)}) == [{"a": 1.0, "b": 2.0}]
    with pytest.raises(ValidationFailed, match=r"numeric tensor \[N, 2\]"):
        numeric.items_from_tensors({"features": np.array([[1.0, 2.0, 3.0]])})
    mixed = TabularClassification(model("tabular-classification", [Feature("age"), Feature("plan", STRING)]))
    assert [(s.name, s.datatype) for s in mixed.tensor_inputs()] == [("age", "FP64"), ("plan", "BYTES")]
    items = mixed.items_from_tensors({"age": np.array([30.0, 40.0]), "plan": np.array([b"pro", b"basic"], dtype=object)})
    assert items == [{"age": 30.0, "plan": "pro"}, {"age": 40.0, "plan": "basic"}]
    with pytest.raises(ValidationFailed, match="same number of rows"):
        mixed.items_from_tensors({"age": np.array([30.0]), "plan": np.array([b"pro", b"basic"], dtype=object)})
    assert NUMBER == "number"


def test_detection_tensors_are_flat_with_the_image_of_each_box():
    from PIL import Image

    task = ObjectDetection(model("object-detection"))
    images = [Decoded(Image.new("RGB", (40, 30)), "a"), Decoded(Image.new("RGB", (8, 8)), "b")]
    results = [[Detection("face", 0.9, 1, 2, 11, 12), Detection("face", 0.5, 20, 2, 30, 12)], []]
    out = task.tensors_from_results(results, images, task.parameters(None))
    assert out["boxes"].tolist() == [[1, 2, 11, 12], [20, 2, 30, 12]] and out["image_index"].tolist() == [0, 0]
    assert out["labels"].tolist() == [b"face", b"face"] and out["image_size"].tolist() == [[40, 30], [8, 8]]
    none = task.tensors_from_results([[]], images[:1], task.parameters(None))
    assert none["boxes"].shape == (0, 4)


def test_a_custom_tasks_tensors_are_json_text():
    from tests.unit.test_tasks import Sizer
    from adapters.manifest import Manifest
    from tasks.custom import CustomTask

    task = CustomTask(Sizer(Manifest(name="s", task="measure", adapter="x"), Path(".")))
    items = task.items_from_tensors({"input": np.array([b'{"label": "a", "image": "x"}'], dtype=object)})
    assert items == [{"label": "a", "image": "x"}]
    out = task.tensors_from_results([{"width": 1, "height": 2}], [Decoded(None, "k")], None)
    assert out["output"].tolist() == [b'{"width":1,"height":2}']
    with pytest.raises(ValidationFailed, match="JSON text"):
        task.items_from_tensors({"input": np.array([b"{no"], dtype=object)})


def test_compressed_bodies_as_tritonclient_sends_them_and_bombs_refused():
    import gzip
    import zlib

    from serving.errors import PayloadTooLarge, UnsupportedMediaType

    data = body([{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["hi"]}])
    assert codec.decompressed(gzip.compress(data), "gzip", 10_000) == data
    assert codec.decompressed(zlib.compress(data), "deflate", 10_000) == data
    assert codec.decompressed(data, "", 10_000) == data
    with pytest.raises(PayloadTooLarge):
        codec.decompressed(gzip.compress(b"0" * 1_000_000), "gzip", 10_000)
    with pytest.raises(InvalidInput, match="not valid gzip"):
        codec.decompressed(b"plain", "gzip", 10_000)
    with pytest.raises(UnsupportedMediaType):
        codec.decompressed(data, "br", 10_000)
