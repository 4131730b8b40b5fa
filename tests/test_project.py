"""The repository keeps its promises: generated files match the code, the
Dockerfile matches the Makefile."""

from __future__ import annotations

import json
import re

import yaml

from scripts.gen_openapi import generate
from scripts.sync_readme_settings import readme_table
from serving.settings import REPO_ROOT, settings_table


def test_openapi_yml_is_generated_from_the_code():
    checked_in = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())
    assert checked_in == yaml.safe_load(generate()), "openapi.yml drifted: run `make openapi`"


def test_openapi_yml_is_valid_openapi():
    from openapi_spec_validator import validate

    document = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises, naming the first error; operation ids must be unique too
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


def test_openapi_documents_every_route():
    paths = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())["paths"]
    expected = {
        "/v1/models": {"get"}, "/v1/models/{name}": {"get"}, "/v1/models/{name}/predict": {"post"},
        "/v1/detect": {"post"}, "/v1/classify": {"post"}, "/v1/cache": {"delete"},
        "/healthz": {"get"}, "/readyz": {"get"}, "/": {"post"}, "/predict": {"post"},
        "/prediction": {"post"}, "/object-detection": {"post"}, "/cache": {"delete"},
        "/healthCheck": {"get"}, "/info": {"get"}, "/forecast": {"get"}, "/recommendation": {"post"},
        "/v2/health/live": {"get"}, "/v2/health/ready": {"get"}, "/v2/models/{name}/ready": {"get"},
        "/v2/models/{name}/versions/{version}/ready": {"get"}, "/v2": {"get"}, "/v2/models/{name}": {"get"},
        "/v2/models/{name}/versions/{version}": {"get"}, "/v2/models/{name}/infer": {"post"},
        "/v2/models/{name}/versions/{version}/infer": {"post"}, "/v2/repository/index": {"get", "post"},
        "/v2/repository/models/{name}/load": {"post"}, "/v2/repository/models/{name}/unload": {"post"},
        "/v1/embeddings": {"post"},
        "/v1/jobs": {"post"}, "/v1/jobs/upload": {"post"}, "/v1/jobs/{job_id}": {"get", "delete"},
        "/v1/jobs/{job_id}/result": {"get"}, "/v1/jobs/{job_id}/files/{name}": {"get"},
        "/generated-images": {"post"}, "/generated-images/{image_id}": {"get"},
        "/generated-images/{image_id}/url": {"get"}, "/image-generation": {"post"},
    }
    # One operation per model of the repository, with its task's schemas; a
    # model that runs only as a job (text to image) has none.
    manifests = {p.parent.name: yaml.safe_load(p.read_text()) for p in (REPO_ROOT / "models").glob("*/model.yaml")}
    models = sorted(name for name, manifest in manifests.items() if manifest["task"] != "text-to-image")
    assert {"iris", "diabetes", "digits", "sentiment", "streamflow", "sentiment-ensemble"} <= set(models)
    assert "tiny-diffusion" in manifests and "tiny-diffusion" not in models
    expected |= {f"/v1/models/{name}/predict": {"post"} for name in models}
    assert {path: set(ops) for path, ops in paths.items()} == expected
    for name in models:
        body = paths[f"/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert body["example"]["inputs"][0] is not None, name
    detect = paths["/v1/detect"]["post"]
    assert {"200", "400", "413", "415", "422"} <= set(detect["responses"])


def test_readme_settings_table_matches_the_settings_class():
    readme = (REPO_ROOT / "README.md").read_text()
    assert readme_table(readme) == settings_table(), "run `make settings-table`"


def makefile_recipe(target: str) -> list[str]:
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{re.escape(target)}\s*:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(BIN)/", ""))
    return recipe


def test_dockerfile_agrees_with_the_makefile():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    assert re.match(r"FROM python:3\.11-slim", instructions[0])
    # The same install steps as the Makefile's environment, less the tests'
    # requirements (requirements-dev.txt includes requirements.txt; the split
    # is checked in tests/test_deploy.py).
    install = " ".join(makefile_recipe("$(STAMP)"))
    assert "-r requirements.txt" in install and "-r requirements.txt" in dockerfile
    assert "-r requirements-dev.txt" in " ".join(makefile_recipe("$(DEV_STAMP)"))
    assert "--no-deps -r requirements-nodeps.txt" in install and "--no-deps -r requirements-nodeps.txt" in dockerfile
    # Dependencies before code, so code edits keep the dependency layer cached.
    assert dockerfile.index("COPY requirements.txt") < dockerfile.index("COPY . .")
    # The model repository is built the way `make models` builds it.
    for artifact in ("$(SENTIMENT)", "$(MINILM_HEAD)", "$(IRIS)", "$(DIABETES)", "$(DIGITS)", "$(STREAMFLOW)", "$(ENSEMBLE)"):
        (train,) = makefile_recipe(artifact)
        assert train in dockerfile
    # The command is `make serve`'s launcher; the image has every model built,
    # so nothing is left to train beside it (make serve's --then).
    (serve,) = makefile_recipe("serve")
    launcher = serve.split(" --then ")[0]
    assert "--then" in serve and "--then" not in dockerfile
    assert f'CMD {launcher.split()}'.replace("'", '"').replace("$(BIN)/python", "python") in dockerfile
    user = re.search(r"^USER (\S+)", dockerfile, re.M)
    assert user and user.group(1) not in ("root", "0")
    assert dockerfile.index("USER") < dockerfile.index("CMD")
    assert re.search(r"HEALTHCHECK .*\n?.*?/healthz", dockerfile)


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in (REPO_ROOT / "README.md").read_text()


def test_requirements_pin_torch_exactly():
    requirements = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pins = [line for line in requirements if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins
    assert all("==" in line for line in pins), "pin every requirement"


def declared_series() -> set[str]:
    """Every series name serving/metrics.py can expose."""
    from prometheus_client.metrics import MetricWrapperBase

    from jobs.records import ModelQueue
    from serving import metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            (family,) = obj.describe()
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    # What the scrape-time collectors yield from the job store.
    figures = {"workers_alive": 1, "queue_depth": 0, "jobs": {"queued": 1}, "now": 2.0,
               "models": {"m": ModelQueue(queued=1, queued_inputs=3, oldest_queued_at=1.0)}}
    for collector in (metrics.JobGauges(figures), metrics.ScheduledRuns([("t", {})])):
        for family in collector.collect():
            names |= {sample.name for sample in family.samples}
    return names


def test_grafana_dashboard_queries_only_metrics_the_service_exposes():
    dashboard = json.loads((REPO_ROOT / "deploy" / "grafana" / "serve-http.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    used = {name for expr in exprs for name in re.findall(r"serve_http_[a-z_]+", expr)}
    assert used and used <= declared_series(), used - declared_series()
    # The panels the README promises.
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("requests per second", "p99", "error rate", "inference", "batch size", "queue depth",
                  "cache hit", "worker restarts"):
        assert topic in titles, topic


def test_prometheus_example_scrapes_metrics():
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert {job["job_name"]: job["metrics_path"] for job in config["scrape_configs"]} == {
        "serve-http": "/metrics", "serve-http-jobs": "/metrics"}
