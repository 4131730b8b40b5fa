"""Fuzzing against our own contract: schemathesis generates requests from the
checked-in ``openapi.yml`` (so drift between file and code is covered too) and
sends them to a live Gunicorn serving the repository's models.

Every check runs: no 5xx, documented status codes, content types, headers and
bodies, schema-breaking requests refused (``negative_data_rejection``) and
schema-valid ones accepted (``positive_data_acceptance``: no 400 or 422 for a
request the document allows). The document says what a value must be where
JSON Schema can: texts with a character that is not white space, one-of
bodies, detection labels, feature ranges, the job body of each model. What it
cannot say is left to a generator, as schemathesis teaches for custom
formats: a base64 ``format: byte`` field here is always an image file, so it
is drawn as one (``images``).

Two families of operations are left out of ``positive_data_acceptance`` alone,
for a reason the schema language has no word for: the generic
``/v1/models/{name}/predict`` (what an input is depends on the model the path
names) and V2 ``infer`` (a tensor's data must hold as many values as its shape
multiplies to, and the binary form is a JSON header plus bytes). Each model's
own operation documents its inputs exactly and is checked fully. The job
upload's file (JSON lines or a zip of images) is the same case, and so is
``POST /v1/jobs``: its examples phase puts one model's example inputs under
another model's name, and a base64 field's ``format`` is an annotation, not
an assertion, to JSON Schema validators, so a text is a schema-valid digit.
The FastAPI book's ``GET /generated-images/{id}/url`` answers a valid
request 400 while the image is not stored yet: its contract, and a state,
not a shape.

Generation is random: a failing run prints the seed to replay it
(``pytest --hypothesis-seed=<seed>``).
"""

from __future__ import annotations

import base64
import io
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import positive_data_acceptance

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Enough per operation for >= 1,000 cases in all: parameterless GETs have one
# case each, the rest draw up to this many.
EXAMPLES_PER_OPERATION = 35

# Live model changes replace every worker (seconds each) and a generated name
# could unload a model the other cases use: tests/e2e/test_model_updates.py
# covers those two operations.
schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi.yml").exclude(path_regex=r"^/v2/repository/models/")
CASES: list[str] = []  # the operation ("POST /v1/detect") of every generated request

# See the module's docstring: where JSON Schema cannot say what a valid input is.
NO_POSITIVE_CHECK = (
    "POST /v1/models/{name}/predict",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "POST /v1/jobs/upload",
    "POST /v1/jobs",
    "GET /generated-images/{image_id}/url",
)


@st.composite
def image_files(draw) -> bytes:
    """A small image file of a format the server opens, of random size and colour."""
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, draw(st.sampled_from(["PNG", "JPEG", "BMP", "GIF"])))
    return buffer.getvalue()


# Every base64 (``format: byte``) field of this API is an image file, and so
# is every multipart part declared ``image/*``.
schemathesis.openapi.format("byte", image_files().map(lambda data: base64.b64encode(data).decode("ascii")))
schemathesis.openapi.media_type("image/*", image_files())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    # No job worker: jobs are accepted and wait queued (SERVE_JOB_WORKER_GRACE_S=0), not refused with 503.
    env = {"SERVE_MODEL_REPOSITORY": str(REPO_ROOT / "models"), "WORKERS": "2", "THREADS": "4",
           "SERVE_JOB_WORKER_GRACE_S": "0"}
    with GunicornServer(tmp, env=env) as server:
        yield server


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_contract_holds_for_generated_requests(case, live):
    CASES.append(case.operation.label)
    excluded = [positive_data_acceptance] if case.operation.label in NO_POSITIVE_CHECK else []
    case.call_and_validate(base_url=live.url, excluded_checks=excluded, timeout=60)


def test_enough_cases_ran_and_the_service_is_live(live, capsys):
    # Runs after the generated tests (file order); alone it still proves liveness.
    ready = requests.get(live.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert requests.post(live.url + "/prediction", json={"text": "a warm, funny film"}, timeout=10).json() == {
        "category": "fresh"
    }
    assert live.process is not None and live.process.poll() is None
    operations = len(set(CASES))
    with capsys.disabled():
        print(f"\n[fuzz] cases={len(CASES)} operations={operations} at {time.strftime('%H:%M:%S')}")
    if CASES:  # the parametrised tests ran in this session
        assert len(CASES) >= 1000, f"only {len(CASES)} generated cases"
    # No request made the server log an unhandled error (a 500 has its traceback there).
    errors = [line for line in live.log().splitlines() if '"level": "ERROR"' in line]
    assert not errors, "\n".join(errors)
