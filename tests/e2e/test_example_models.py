"""The repository's example models (iris, diabetes, digits) under a real
Gunicorn, as `make serve` serves them: preloaded in the master, forked workers."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import joblib
import pandas as pd
import pytest
import requests

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

SETOSA = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"SERVE_MODELS": "iris,diabetes,digits", "WORKERS": "2"}
    with GunicornServer(tmp_path_factory.mktemp("examples"), env=env) as server:
        yield server


def predict(server: GunicornServer, model: str, inputs: list) -> requests.Response:
    return requests.post(f"{server.url}/v1/models/{model}/predict", json={"inputs": inputs}, timeout=30)


def test_iris_answers_setosa_with_scores(server):
    r = predict(server, "iris", [SETOSA])
    assert r.status_code == 200
    (output,) = r.json()["outputs"]
    assert output["category"] == "setosa" and output["scores"]["setosa"] > 0.9


def test_a_missing_feature_is_a_422_naming_it(server):
    record = {k: v for k, v in SETOSA.items() if k != "sepal width (cm)"}
    r = predict(server, "iris", [SETOSA, record])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "validation_failed"
    assert error["details"] == [{"field": "inputs[1].sepal width (cm)", "message": "Field required", "type": "missing"}]
    assert "Traceback" not in r.text


def test_diabetes_value_is_the_estimators_own(server):
    from sklearn.datasets import load_diabetes

    model = joblib.load(REPO_ROOT / "models" / "diabetes" / "model.joblib")
    rows = load_diabetes(as_frame=True, scaled=False).data.iloc[:16]
    outputs = predict(server, "diabetes", rows.to_dict("records")).json()["outputs"]
    expected = model.predict(pd.DataFrame(rows))
    assert len(outputs) == 16
    for output, value in zip(outputs, expected.tolist()):
        assert abs(output["value"] - value) <= 1e-6


def test_digits_recognises_held_out_images_from_concurrent_clients(server):
    from PIL import Image

    from training.train_digits import split

    _, x_test, _, y_test = split(seed=0, test_size=0.25)

    def as_png(grid) -> str:
        buffer = io.BytesIO()
        Image.fromarray((grid * 255).astype("uint8")).resize((32, 32), Image.Resampling.NEAREST).save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    images = [as_png(grid) for grid in x_test[:100]]
    # Eight clients at once, four images each: the worker's batcher gathers them.
    chunks = [images[i:i + 4] for i in range(0, 100, 4)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda chunk: predict(server, "digits", chunk), chunks))
    assert all(r.status_code == 200 for r in answers)
    digits = [o["digit"] for r in answers for o in r.json()["outputs"]]
    correct = sum(d == y for d, y in zip(digits, y_test[:100]))
    assert correct >= 95, correct
