"""Fuzzing against our own contract: schemathesis generates requests from the
checked-in ``openapi.yml`` (so drift between file and code is covered too) and
sends them to a live Gunicorn.

Every response must be no 5xx, carry a documented status code, content type,
headers and body schema, and schema-breaking requests must be refused. The one
check left out is ``positive_data_acceptance`` (schema-valid data must get a
2xx): a base64 string that fits the schema is still not an image, and the
schema cannot say "a decodable photo", so the documented 400 is right there.

Generation is derandomised (same cases on every run) so CI is reproducible.
"""

from __future__ import annotations

import shutil
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Enough per operation for >= 1,000 cases in all: parameterless GETs have one
# case each, the rest draw up to this many.
EXAMPLES_PER_OPERATION = 130

# Live model changes replace every worker (seconds each) and a generated name
# could unload a model the other cases use: tests/e2e/test_model_updates.py
# covers those two operations.
schema = schemathesis.openapi.from_path(REPO_ROOT / "openapi.yml").exclude(path_regex=r"^/v2/repository/models/")
CASES: list[str] = []  # the operation ("POST /v1/detect") of every generated request


# The repository's tabular and custom models beside the test repository: their
# operations are fuzzed against the real models (the others' answer 404).
EXTRA_MODELS = ("iris", "diabetes", "digits")


@pytest.fixture(scope="module")
def live(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    repository = tmp / "models"
    shutil.copytree(model_repo, repository)
    for name in EXTRA_MODELS:
        shutil.copytree(REPO_ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {"SERVE_MODEL_REPOSITORY": str(repository), "WORKERS": "2", "THREADS": "4"}
    with GunicornServer(tmp, env=env) as server:
        yield server


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_contract_holds_for_generated_requests(case, live):
    CASES.append(case.operation.label)
    case.call_and_validate(base_url=live.url, excluded_checks=[positive_data_acceptance], timeout=60)


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
