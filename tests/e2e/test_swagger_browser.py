"""The Swagger UI of a running Gunicorn, in a real headless Chromium."""

from __future__ import annotations

import json
import shutil

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from serving.settings import REPO_ROOT
from tests.e2e.browser import chromium, requested_urls
from tests.e2e.server import GunicornServer

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gunicorn-docs")
    repository = tmp / "models"
    shutil.copytree(model_repo, repository)
    for name in ("iris", "digits"):  # a tabular and a custom model, each with its own operation
        shutil.copytree(REPO_ROOT / "models" / name, repository / name, ignore=shutil.ignore_patterns("__pycache__"))
    with GunicornServer(tmp, env={"SERVE_MODEL_REPOSITORY": str(repository), "WORKERS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with chromium() as chrome:
        yield chrome


def test_swagger_lists_operations_and_runs_try_it_out(server, browser):
    browser.get(server.url + "/apidoc/swagger")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    paths = {el.get_attribute("data-path") for el in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/detect", "/v1/classify", "/v1/models", "/readyz", "/", "/predict", "/prediction"} <= paths

    # Open POST /v1/classify, press "Try it out", put a body in and execute it.
    block = browser.find_element(By.ID, "operations-classification-classify")
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#operations-classification-classify .try-out__btn"))).click()
    editor = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, "#operations-classification-classify textarea.body-param__text"))
    )
    editor.clear()
    editor.send_keys('{"text": "a warm, funny, beautifully acted film"}')
    block.find_element(By.CSS_SELECTOR, ".execute").click()

    status = wait.until(
        EC.presence_of_element_located(
            (By.CSS_SELECTOR, "#operations-classification-classify .live-responses-table tbody .response-col_status")
        )
    )
    assert status.text.strip().startswith("200")
    body = block.find_element(By.CSS_SELECTOR, ".live-responses-table tbody .microlight").text
    assert json.loads(body)["category"] == "fresh"

    # Every file the page loaded came from our server: nothing from a CDN.
    urls = [u for u in requested_urls(browser) if u.startswith("http")]
    assert urls and all(u.startswith(server.url) for u in urls), urls


@pytest.mark.parametrize("model, answer", [("iris", {"category": "setosa"}), ("digits", {"digit": 0})])
def test_each_models_operation_runs_its_example_as_prefilled(server, browser, model, answer):
    """Try it out on a model's own operation, body untouched: the example the
    document carries is a request that works."""
    browser.get(server.url + "/apidoc/swagger")
    wait = WebDriverWait(browser, 30)
    operation = f"#operations-models-predict_{model}"
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, operation))).find_element(
        By.CSS_SELECTOR, ".opblock-summary"
    ).click()
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{operation} .try-out__btn"))).click()
    editor = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, f"{operation} textarea.body-param__text")))
    assert json.loads(editor.get_attribute("value"))["inputs"]  # prefilled, not placeholders
    browser.find_element(By.CSS_SELECTOR, f"{operation} .execute").click()
    status = wait.until(
        EC.presence_of_element_located((By.CSS_SELECTOR, f"{operation} .live-responses-table tbody .response-col_status"))
    )
    assert status.text.strip().startswith("200")
    body = json.loads(browser.find_element(By.CSS_SELECTOR, f"{operation} .live-responses-table tbody .microlight").text)
    (output,) = body["outputs"]
    assert {key: output[key] for key in answer} == answer


def test_redoc_renders_offline(server, browser):
    browser.get(server.url + "/apidoc/redoc")
    WebDriverWait(browser, 30).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, "body"), "Vision-style batch detection")
    )
    urls = [u for u in requested_urls(browser) if u.startswith("http")]
    assert all(u.startswith(server.url) for u in urls), urls
