"""The README's curl examples, run as written against a real Gunicorn."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer, wait_for

pytestmark = pytest.mark.e2e


def sh_blocks(heading: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def try_it_blocks() -> list[str]:
    return sh_blocks("## Try it")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # The repository's own models, as `make serve` runs them; no job worker, and
    # jobs accepted all the same (SERVE_JOB_WORKER_GRACE_S=0): they wait queued.
    env = {"WORKERS": "2", "SERVE_JOB_WORKER_GRACE_S": "0"}
    with GunicornServer(tmp_path_factory.mktemp("readme"), env=env) as server:
        yield server


def test_every_readme_curl_answers_as_documented(server, tmp_path):
    blocks = try_it_blocks()
    assert len(blocks) >= 6
    # Each curl also prints its status on a line of its own.
    script = "set -euo pipefail\ncurl() { command curl -w '\\n@@%{http_code}\\n' \"$@\"; }\n"
    script += "\n".join(block.replace("localhost:8000", f"127.0.0.1:{server.port}") for block in blocks)
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = re.findall(r"(.*?)\n@@(\d{3})\n", done.stdout, re.S)
    curls = sum(block.count("curl ") for block in blocks)
    assert len(answers) == curls
    statuses = [int(status) for _, status in answers]
    # All succeed but the two mistakes shown at the end.
    assert statuses[:-2] == [200] * (curls - 2)
    assert statuses[-2:] == [400, 422]
    for body, _ in answers:
        json.loads(body)
    detect = json.loads(answers[0][0])
    assert len(detect["responses"][0]["objects"]) == 1


def test_readme_observability_commands_work(server):
    (block,) = [b for b in sh_blocks("## Observability") if "grep '^serve_http_requests_total'" in b]
    requests_seen = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block.replace("localhost:8000", f"127.0.0.1:{server.port}")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert requests_seen.returncode == 0, requests_seen.stderr
    assert re.search(r'^serve_http_requests_total\{.*route="/readyz".*\} [1-9]', requests_seen.stdout, re.M)


def test_readme_console_tracing_commands_work(tmp_path):
    # The block without a collector: its `make serve` line is this Gunicorn with
    # the variables the line sets, the other lines run as written.
    (block,) = [b for b in sh_blocks("## Observability") if "make serve" in b and "console" in b]
    (serve,) = [line for line in block.splitlines() if line.endswith("make serve")]
    env = dict(pair.split("=", 1) for pair in serve.split()[:-2])
    assert env == {"OTEL_TRACES_EXPORTER": "console"}
    rest = "\n".join(line for line in block.splitlines() if line != serve)
    with GunicornServer(tmp_path, env={"WORKERS": "2", "SERVE_MODELS": "sentiment", **env}) as traced:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + rest.replace("localhost:8000", f"127.0.0.1:{traced.port}")],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[0])["outputs"][0]["category"] in ("fresh", "rotten", "plot")
        exemplars = [line for line in done.stdout.splitlines()[1:] if "trace_id" in line]
        assert exemplars and all(line.startswith("serve_http_") and " # {" in line for line in exemplars)
        # The console exporter printed the request's spans on the server's stdout.
        wait_for(lambda: '"name": "model sentiment"' in traced.log(), 20, "the spans on stdout")


def python_blocks(heading: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_client_examples_run_as_written(server):
    tritonclient_example, openai_example = python_blocks("## Clients: the Open Inference Protocol and OpenAI")
    outputs = []
    for code in (tritonclient_example, openai_example):
        code = code.replace("localhost:8000", f"127.0.0.1:{server.port}")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.splitlines())
    ready, labels, sentiment = outputs[0][0], outputs[0][1], outputs[0][-1]  # the scores print on two lines
    assert ready.startswith("True [{'name': 'features', 'datatype': 'FP64', 'shape': [-1, 4]}]")
    assert labels.startswith("[b'setosa' b'virginica']") and sentiment == "[b'fresh']"
    (counts,) = outputs[1]
    count, dimension, tokens = counts.split()
    assert (count, dimension) == ("2", "384") and int(tokens) > 8


def test_readme_model_update_commands_work(server):
    blocks = sh_blocks("## Clients: the Open Inference Protocol and OpenAI")
    (block,) = blocks
    script = "set -euo pipefail\ncurl() { command curl -w '\\n@@%{http_code}\\n' \"$@\"; }\n"
    script += block.replace("localhost:8000", f"127.0.0.1:{server.port}")
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    answers = re.findall(r"(.*?)\n@@(\d{3})\n", done.stdout, re.S)
    assert [int(status) for _, status in answers] == [200, 200, 200]
    index = {entry["name"]: entry["state"] for entry in json.loads(answers[0][0])}
    assert index["iris"] == "READY" and set(index.values()) == {"READY"}
    assert json.loads(answers[2][0]) == {"name": "iris", "message": "loaded iris"}
    r = requests.post(f"{server.url}/v1/models/iris/predict", json={"inputs": [dict(zip(
        ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"], [5.1, 3.5, 1.4, 0.2]))]}, timeout=30)
    assert r.json()["outputs"][0]["category"] == "setosa"


def test_readme_stream_example_runs_as_written(server):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Real-time detection over WebSocket", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    code = code.replace("localhost:8000", f"127.0.0.1:{server.port}")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ready" and "'score_th': 0.5" in lines[1] and "'maxResults': 5" in lines[1]
    assert [line.split(" ", 1)[0] for line in lines[2:]] == ["1", "2", "3"]
    assert all("['face']" in line for line in lines[2:]), lines


def test_readme_job_poll_ends_on_a_job_that_will_not_succeed(server):
    # The whole block runs in tests/e2e/test_jobs.py, with a job worker; here,
    # with none, a job stays queued until it is cancelled: the poll must end.
    block = sh_blocks("## Background jobs")[0]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("while "))
    end = next(i for i, line in enumerate(lines) if line.startswith('[ "$STATUS" = succeeded ]'))
    poll = "\n".join(lines[start:end + 1]).replace("localhost:8000", f"127.0.0.1:{server.port}")
    submitted = requests.post(f"{server.url}/v1/jobs", json={"model": "sentiment", "inputs": ["a fine film"]}, timeout=10)
    job = submitted.json()["id"]
    assert submitted.status_code == 202 and requests.get(f"{server.url}/v1/jobs/{job}", timeout=5).json()["status"] == "queued"
    poller = subprocess.Popen(["bash", "-c", f"set -euo pipefail\nJOB={job}\n{poll}"], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert requests.delete(f"{server.url}/v1/jobs/{job}", timeout=5).json()["status"] == "cancelled"
    out, err = poller.communicate(timeout=30)  # a loop that never ends fails here
    assert poller.returncode == 0, err
    assert out == "" and err == f"job {job} ended cancelled; GET /v1/jobs/{job} has its error\n"


# --- "Serve your own model", run as a new user would --------------------------------


def run_curls(script_blocks: list[str], port: int) -> list[tuple[str, int]]:
    """Every curl of the blocks, run by bash as written: (body, status) each."""
    script = "set -euo pipefail\ncurl() { command curl -w '\\n@@%{http_code}\\n' \"$@\"; }\n"
    script += "\n".join(block.replace("localhost:8000", f"127.0.0.1:{port}") for block in script_blocks)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = re.findall(r"(.*?)\n@@(\d{3})\n", done.stdout, re.S)
    assert len(answers) == sum(block.count("curl ") for block in script_blocks)
    return [(body.strip(), int(status)) for body, status in answers]


def review_rows() -> str:
    good = ["warm", "funny", "moving", "sharp", "lovely"]
    bad = ["dull", "tedious", "flat", "clumsy", "boring"]
    rows = ["text,label"]
    for i in range(40):
        rows.append(f"a {good[i % 5]} and {good[(i + 1) % 5]} film {i},fresh")
        rows.append(f"a {bad[i % 5]} and {bad[(i + 1) % 5]} film {i},rotten")
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def own_models(tmp_path_factory):
    """A fresh working folder laid out as the repository (its .venv and
    training scripts), where the section's setup commands run as written."""
    from tests.tiny_transformers import write_checkpoint

    work = tmp_path_factory.mktemp("own-models")
    (work / ".venv").symlink_to(REPO_ROOT / ".venv")
    (work / "training").symlink_to(REPO_ROOT / "training")
    (work / "models").mkdir()
    # What `hf download dslim/bert-base-NER --local-dir models/ner/checkpoint` would
    # put there (it needs the network): a random checkpoint of the same task.
    write_checkpoint(work / "models" / "ner" / "checkpoint", "token-classification")
    # The CSV the text-classifier command reads.
    (work / "reviews.csv").write_text(review_rows())
    blocks = sh_blocks("## Serve your own model")
    setup = [block for block in blocks if "curl " not in block]
    calls = [block for block in blocks if "curl " in block]
    assert len(setup) == 4 and len(calls) == 3
    for block in setup:
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block], cwd=work, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{block}\n{done.stderr}"
    env = {"SERVE_MODEL_REPOSITORY": str(work / "models"), "WORKERS": "1"}
    with GunicornServer(tmp_path_factory.mktemp("own-server"), env=env) as server:
        yield work, server, run_curls(calls, server.port)


def test_a_tabular_folder_with_a_four_line_manifest_is_served(own_models):
    import joblib
    import pandas as pd

    work, _, answers = own_models
    manifest = (work / "models" / "churn" / "model.yaml").read_text().splitlines()
    assert len(manifest) == 4 and [line.split(":")[0] for line in manifest[1:]] == ["task", "adapter", "source"]
    (card, card_status), (predicted, status), (refused, refused_status) = answers[:3]
    assert (card_status, status, refused_status) == (200, 200, 422)
    assert json.loads(card)["task"] == "tabular-classification" and sorted(json.loads(card)["labels"]) == ["no", "yes"]
    # The answers are the pipeline's own, on the same rows.
    model = joblib.load(work / "models" / "churn" / "model.joblib")
    rows = pd.DataFrame([
        {"tenure_months": 3, "monthly_charges": 80.5, "contract": "monthly"},
        {"tenure_months": 40, "monthly_charges": 60, "contract": "two-year"},
    ])
    expected = model.predict_proba(rows)
    outputs = json.loads(predicted)["outputs"]
    assert [o["category"] for o in outputs] == list(model.predict(rows))
    for output, row in zip(outputs, expected):
        assert [output["scores"][label] for label in model.classes_] == pytest.approx(list(row), abs=1e-6)
    error = json.loads(refused)["error"]
    assert {d["field"] for d in error["details"]} == {"inputs[0].monthly_charges", "inputs[0].contract"}
    assert "'monthly', 'two-year' or 'yearly'" in " ".join(d["message"] for d in error["details"])


def test_a_custom_model_py_is_served_with_its_own_schema(own_models):
    _, server, answers = own_models
    (verdicts, status), (refused, refused_status) = answers[3:5]
    assert (status, refused_status) == (200, 422)
    readme = (REPO_ROOT / "README.md").read_text()
    first, second = json.loads(verdicts)["outputs"]
    # The figures the README quotes.
    assert f'`{{"zscore": {first["zscore"]}, "spike": true}}`' in readme.replace("\n", " ")
    assert f'`{{"zscore": {second["zscore"]}, "spike": false}}`' in readme.replace("\n", " ")
    assert first["spike"] and not second["spike"]
    assert [d["field"] for d in json.loads(refused)["error"]["details"]] == ["inputs[0].values"]
    # The model's own Input and Output are in the live OpenAPI document.
    document = requests.get(server.url + "/apidoc/openapi.json", timeout=10).json()
    assert "/v1/models/spikes/predict" in document["paths"]
    assert {"Window", "Verdict"} <= set(document["components"]["schemas"])


def test_a_hugging_face_checkpoint_folder_is_served(own_models):
    _, _, answers = own_models
    (body, status), = answers[5:]
    assert status == 200
    text = "Ann lives in Berlin and works for Siemens."
    (output,) = json.loads(body)["outputs"]
    # Random weights: the labels are noise, the offsets must still be the text's.
    for entity in output["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"] and 0 <= entity["score"] <= 1
        assert entity["label"] in {"PER", "LOC", "ORG"}


def test_the_text_classifier_command_trains_from_a_csv(own_models):
    work, _, _ = own_models
    for name in ("model.joblib", "labels.json", "metrics.json"):
        assert (work / "models" / "reviews" / name).is_file()
    assert json.loads((work / "models" / "reviews" / "labels.json").read_text()) == ["fresh", "rotten"]


# --- the seed systems' sections -------------------------------------------------------


def test_readme_forecast_commands_work(server, tmp_path):
    from tests.unit.test_forecast import seasonal_csv

    blocks = sh_blocks("## Forecast service")
    calls = [block for block in blocks if "curl " in block]
    (train,) = [block for block in blocks if "curl " not in block]
    answers = run_curls(calls, server.port)
    assert [status for _, status in answers] == [200, 200, 404, 422]
    info, forecast, unknown, too_far = (json.loads(body) for body, _ in answers)
    assert [site["id"] for site in info["data"]["sites"]] == ["09447000", "1160815"] and info["success"] is True
    assert forecast["data"]["forecast_days"] == 5 and len(forecast["data"]["forecast"]) == 5
    model = requests.post(f"{server.url}/v1/models/streamflow/predict",
                          json={"inputs": [{"series": "09447000", "horizon": 5}]}, timeout=30).json()
    assert [p["flow"] for p in forecast["data"]["forecast"]] == [s["value"] for s in model["outputs"][0]["forecast"]]
    assert unknown["success"] is False and too_far["success"] is False and "at most 14" in too_far["message"]
    # The training command, as written, on a CSV of the documented columns.
    (tmp_path / ".venv").symlink_to(REPO_ROOT / ".venv")
    (tmp_path / "training").symlink_to(REPO_ROOT / "training")
    seasonal_csv(tmp_path / "flows.csv")
    (tmp_path / "sites.csv").write_text("id,name,latitude,longitude,area,elevation\na,Upper A,46.5,7.9,120,1500\n")
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + train], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "models" / "my-rivers").iterdir()} >= {"model.json", "sites.db", "metrics.json", "SHA256SUMS"}


def test_readme_ensemble_commands_work(server):
    (block,) = [b for b in sh_blocks("## Ensembles") if "curl " in b]
    (ensemble, status), (recommendation, recommendation_status) = run_curls([block], server.port)
    assert (status, recommendation_status) == (200, 200)
    (out,) = json.loads(ensemble)["outputs"]
    members = [requests.post(f"{server.url}/v1/models/{m}/predict", json={"inputs": ["a warm, funny, beautifully acted film"]},
                             timeout=30).json()["outputs"][0] for m in ("sentiment", "minilm-sentiment")]
    for label, score in out["scores"].items():
        assert score == pytest.approx(sum(m["scores"][label] for m in members) / 2, abs=2e-6)
    assert out["partial"] is False and out["category"] == "fresh"
    assert json.loads(recommendation)["result"]["category"] == "rotten"
