"""Every task through the HTTP API (Flask test client): the example models of
the repository (iris, diabetes, digits), a pandas pipeline, a custom model.py,
Hugging Face checkpoints with random weights, jobs and the OpenAPI document."""

from __future__ import annotations

import io
import json
import zipfile

import joblib
import pandas as pd
import pytest

from serve_http import create_app
from serving.settings import REPO_ROOT
from tests.api.test_jobs import run_queued

SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}
PATIENT = {"age": 59, "sex": 2, "bmi": 32.1, "bp": 101, "s1": 157, "s2": 93.2, "s3": 38, "s4": 4, "s5": 4.8598, "s6": 87}


@pytest.fixture
def app(settings, task_registry, task_repo):
    settings.model_repository = task_repo
    settings.job_batch_size = 2
    return create_app(settings, registry=task_registry)


def predict(client, model: str, inputs: list, **extra):
    return client.post(f"/v1/models/{model}/predict", json={"inputs": inputs, **extra})


def fields(response) -> list[str]:
    assert response.status_code == 422, response.get_json()
    return [d["field"] for d in response.get_json()["error"]["details"]]


def test_iris_answers_setosa_with_scores(client):
    body = predict(client, "iris", [SETOSA]).get_json()
    assert (body["model"], body["task"]) == ("iris", "tabular-classification")
    (output,) = body["outputs"]
    assert output["category"] == "setosa" and set(output["scores"]) == {"setosa", "versicolor", "virginica"}
    assert output["scores"]["setosa"] == max(output["scores"].values())


def test_iris_refuses_missing_extra_and_mistyped_features_naming_them(client):
    missing = {k: v for k, v in SETOSA.items() if k != "petal width (cm)"}
    assert fields(predict(client, "iris", [SETOSA, missing])) == ["inputs[1].petal width (cm)"]
    assert fields(predict(client, "iris", [{**SETOSA, "colour": "blue"}])) == ["inputs[0].colour"]
    assert fields(predict(client, "iris", [{**SETOSA, "sepal length (cm)": "5.1"}])) == ["inputs[0].sepal length (cm)"]
    assert fields(predict(client, "iris", ["a text"])) == ["inputs[0]"]
    # Detection options mean nothing to a tabular model.
    assert fields(predict(client, "iris", [SETOSA], parameters={"maxResults": 3})) == ["parameters.maxResults"]


def test_diabetes_answers_the_estimators_own_value(client):
    model = joblib.load(REPO_ROOT / "models" / "diabetes" / "model.joblib")
    rows = [PATIENT, {**PATIENT, "bmi": 21.0, "age": 30}]
    expected = model.predict(pd.DataFrame(rows))
    outputs = predict(client, "diabetes", rows).get_json()["outputs"]
    assert [o["value"] for o in outputs] == pytest.approx(expected.tolist(), abs=1e-6)
    # The imputer reads every column first: a missing value is fine.
    imputed = predict(client, "diabetes", [{**PATIENT, "bmi": None}])
    assert imputed.status_code == 200 and imputed.get_json()["outputs"][0]["value"] != outputs[0]["value"]


def test_a_record_is_cached_whatever_its_key_order(client):
    first = predict(client, "iris", [SETOSA])
    again = predict(client, "iris", [dict(reversed(SETOSA.items()))])
    assert (first.headers["X-Cache"], again.headers["X-Cache"]) == ("MISS", "HIT")
    assert first.get_json() == again.get_json()


def test_digits_reads_grids_and_images_of_held_out_digits(client):
    from PIL import Image

    from training.train_digits import split

    _, x_test, _, y_test = split(seed=0, test_size=0.25)  # the split training held out
    grids = [(grid * 16).round().tolist() for grid in x_test[:40]]
    images = []
    for grid in x_test[:40]:
        buffer = io.BytesIO()
        Image.fromarray((255 - grid * 255).astype("uint8")).resize((64, 64), Image.Resampling.NEAREST).save(buffer, "PNG")
        images.append(__import__("base64").b64encode(buffer.getvalue()).decode())
    by_grid = [o["digit"] for o in predict(client, "digits", grids).get_json()["outputs"]]
    by_image = [o["digit"] for o in predict(client, "digits", images).get_json()["outputs"]]
    assert sum(d == y for d, y in zip(by_grid, y_test[:40])) >= 38
    assert by_image == by_grid  # dark ink on white paper, 64x64: the same digits
    assert fields(predict(client, "digits", [grids[0][:7]])) == ["inputs[0].grid"]
    bad_image = predict(client, "digits", ["not base64!"])
    assert bad_image.status_code == 400 and bad_image.get_json()["error"]["details"] == [
        {"field": "inputs[0]", "message": "image content is not valid base64", "type": "invalid_input"}]


def test_a_pandas_pipeline_folder_is_served_with_no_code(client, task_repo):
    model = joblib.load(task_repo / "churn" / "model.joblib")
    rows = [{"tenure_months": 3, "monthly_charges": 80.5, "contract": "monthly"},
            {"tenure_months": 40, "monthly_charges": 60.0, "contract": "two-year"}]
    outputs = predict(client, "churn", rows).get_json()["outputs"]
    assert [o["category"] for o in outputs] == list(model.predict(pd.DataFrame(rows)))
    assert fields(predict(client, "churn", [{**rows[0], "contract": "weekly"}])) == ["inputs[0].contract"]


def test_a_custom_model_py_through_the_api(client):
    assert predict(client, "echo", [{"text": "hi"}]).get_json() == {
        "model": "echo", "version": "1", "task": "echo", "outputs": [{"text": "> hi"}]
    }
    assert fields(predict(client, "echo", [{"words": "hi"}])) == ["inputs[0].text"]


def test_hugging_face_tasks_through_the_api(client):
    text = "Ann lives in Berlin."
    (entities,) = predict(client, "ner", [text]).get_json()["outputs"]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities["entities"])
    question = {"question": "Where does Ann live?", "context": "Ann lives in Berlin."}
    (answer,) = predict(client, "qa", [question]).get_json()["outputs"]
    assert question["context"][answer["start"]:answer["end"]] == answer["answer"] and 0 < answer["score"] <= 1
    assert fields(predict(client, "qa", [{"question": "where?"}])) == ["inputs[0].context"]
    assert fields(predict(client, "ner", [""])) == ["inputs[0]"]


def test_task_routes_refuse_models_of_another_task(client):
    r = client.post("/v1/classify", json={"text": "a film", "model": "iris"})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "wrong_task"
    r = client.post("/v1/detect", json={"requests": [{"image": {"content": "AA=="}, "model": "digits"}]})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "wrong_task"


def test_the_models_list_names_every_task(client):
    tasks = {m["name"]: m["task"] for m in client.get("/v1/models").get_json()["models"]}
    assert tasks == {
        "churn": "tabular-classification", "diabetes": "tabular-regression", "digits": "digit-recognition",
        "echo": "echo", "faces": "object-detection", "iris": "tabular-classification", "ner": "token-classification",
        "qa": "question-answering", "sentiment": "text-classification",
    }


def test_every_served_model_has_an_operation_whose_example_body_works(client):
    document = client.get("/apidoc/openapi.json").get_json()
    generic = document["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
    for name in ("churn", "diabetes", "digits", "echo", "faces", "iris", "ner", "qa", "sentiment"):
        operation = document["paths"][f"/v1/models/{name}/predict"]["post"]
        example = operation["requestBody"]["content"]["application/json"]["example"]
        assert generic["examples"][name]["value"] == example
        r = client.post(f"/v1/models/{name}/predict", json=example)
        assert r.status_code == 200, (name, r.get_json())
        assert operation["operationId"] == f"predict_{name}" and "404" in operation["responses"]
    schemas = document["components"]["schemas"]
    iris_request = schemas["Predict_iris_Request"]["properties"]["inputs"]["items"]["$ref"].rsplit("/", 1)[1]
    assert list(schemas[iris_request]["properties"]) == list(SETOSA)
    churn_record = schemas[schemas["Predict_churn_Request"]["properties"]["inputs"]["items"]["$ref"].rsplit("/", 1)[1]]
    assert churn_record["properties"]["contract"]["enum"] == ["monthly", "two-year", "yearly"]
    digits = schemas["Predict_digits_Response"]["properties"]["outputs"]["items"]["$ref"]
    assert digits == "#/components/schemas/Digit"


# --- jobs ------------------------------------------------------------------------------------


def test_a_job_of_records_equals_the_predict_route(client, app, task_registry):
    rows = [SETOSA, {**SETOSA, "petal length (cm)": 5.0, "petal width (cm)": 1.8}, SETOSA]
    r = client.post("/v1/jobs", json={"model": "iris", "inputs": rows})
    assert r.status_code == 202
    job_id = r.get_json()["id"]
    run_queued(app, task_registry, job_id)
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"
    lines = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/result").get_data(as_text=True).splitlines()]
    expected = predict(client, "iris", rows).get_json()["outputs"]
    assert lines == [{"index": i, "output": output} for i, output in enumerate(expected)]


def test_a_job_with_a_bad_record_is_refused_at_submit(client):
    r = client.post("/v1/jobs", json={"model": "iris", "inputs": [SETOSA, {"sepal length (cm)": 1}]})
    assert r.status_code == 422
    assert "inputs[1].petal width (cm)" in [d["field"] for d in r.get_json()["error"]["details"]]
    r = client.post("/v1/jobs", json={"model": "iris", "inputs": [SETOSA], "parameters": {"score_th": 0.5}})
    assert r.status_code == 422 and fields(r) == ["parameters.score_th"]


def test_an_uploaded_file_of_records_and_a_zip_for_a_tabular_model(client, app, task_registry):
    data = "\n".join(json.dumps(row) for row in (SETOSA, SETOSA)).encode()
    form = {"inputs": (io.BytesIO(data), "rows.jsonl", "application/x-ndjson"), "model": "iris"}
    r = client.post("/v1/jobs/upload", data=form, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    run_queued(app, task_registry, r.get_json()["id"])
    result = client.get(f"/v1/jobs/{r.get_json()['id']}/result").get_data(as_text=True).splitlines()
    assert [json.loads(line)["output"]["category"] for line in result] == ["setosa", "setosa"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", b"x")
    form = {"inputs": (io.BytesIO(buffer.getvalue()), "a.zip", "application/zip"), "model": "iris"}
    r = client.post("/v1/jobs/upload", data=form, content_type="multipart/form-data")
    assert r.status_code == 422 and "image model" in r.get_json()["error"]["message"]
