"""The container and the one-host scale-out keep their promises, read from the
files themselves (no Docker here): the Dockerfile builds what `make models`
builds, installs torch as the Makefile does and ships no test package; the
build context keeps secrets out and model artifacts in; deploy/compose.yaml
sets only settings the service reads, and every port, health check, scrape
target and dashboard it names exists.

Real parsers where the tools have them: Docker's own .dockerignore matcher
(the docker SDK's), dockerfile-parse, NGINX's crossplane, Prometheus and
Grafana files as YAML/JSON. Compose's ``${NAME:-default}`` interpolation is
done here, minimally, with the defaults (as on a machine with no deploy/.env).
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import crossplane
import pytest
import yaml
from docker.utils.build import PatternMatcher, exclude_paths
from dockerfile_parse import DockerfileParser
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from jobs.launch import COMMANDS
from serving.settings import REPO_ROOT, Settings, env_names
from tests.test_project import makefile_recipe

DEPLOY = REPO_ROOT / "deploy"
# The app's own top-level packages and modules: the code the image runs.
RUNTIME_PACKAGES = ("adapters", "api", "jobs", "serving", "tasks", "training", "models")
RUNTIME_MODULES = ("serve_http.py", "predict.py", "utils_serve.py", "gunicorn.conf.py")
# Read by libraries, not by the settings class; the README documents them.
# Read by libraries, not by serving/settings.py: boto3's keys, the OpenTelemetry SDK's.
LIBRARY_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
)


# --- reading the files ----------------------------------------------------


def makefile_variables() -> dict[str, str]:
    found = {}
    for line in (REPO_ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Z_]+)\s*(?::=|\?=|=)\s*(.*)$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def model_rules() -> list[tuple[str, str]]:
    """(artifact, training command) of each prerequisite of `make models`, in order."""
    (line,) = [line for line in (REPO_ROOT / "Makefile").read_text().splitlines() if line.startswith("models:")]
    variables = makefile_variables()
    rules = []
    for target in line.split(":", 1)[1].split():
        (command,) = makefile_recipe(target)
        rules.append((variables[target[2:-1]], command))
    return rules


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Each stage's (instruction, value) pairs, continuation lines joined."""
    parser = DockerfileParser(fileobj=io.BytesIO((REPO_ROOT / "Dockerfile").read_bytes()))
    stages: list[list[tuple[str, str]]] = []
    for item in parser.structure:
        if item["instruction"] == "COMMENT":
            continue
        if item["instruction"] == "FROM":
            stages.append([])
        stages[-1].append((item["instruction"], " ".join(item["value"].split())))
    return stages


def runs(stage: list[tuple[str, str]]) -> list[str]:
    return [value for instruction, value in stage if instruction == "RUN"]


def requirement_names(path: Path) -> set[str]:
    """The distributions a requirements file names itself (not through ``-r``)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonicalize_name(Requirement(line).name))
    return names


def installed_closure(roots: list[Requirement]) -> set[str]:
    """Every distribution that installing ``roots`` brings, from the installed metadata."""
    seen: dict[str, set[str]] = {}
    pending = [(root, set(root.extras)) for root in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        for line in metadata.distribution(name).requires or []:
            dependency = Requirement(line)
            environments = [{**default_environment(), "extra": extra} for extra in (extras or {""})]
            if dependency.marker is None or any(dependency.marker.evaluate(env) for env in environments):
                pending.append((dependency, set(dependency.extras)))
    return set(seen)


def runtime_distributions() -> set[str]:
    """What the image's venv holds: requirements.txt with its dependencies, and
    requirements-nodeps.txt alone (installed with --no-deps)."""
    pins = [line.split("#", 1)[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    closure = installed_closure([Requirement(pin) for pin in pins if pin])
    return closure | requirement_names(REPO_ROOT / "requirements-nodeps.txt")


def dockerignore_patterns() -> list[str]:
    # As the docker SDK reads the file before building.
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


_VARIABLE = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value):
    """Compose's interpolation with every variable unset: ``${NAME:-default}``
    is the default, ``$$`` a dollar sign."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: "$" if m[1] else (m[3] or ""), value)
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def serve_services(compose: dict) -> dict[str, dict]:
    """The services that run this repository's image."""
    return {name: s for name, s in compose["services"].items() if s.get("build", {}).get("context") == ".."}


def settings_names() -> dict[str, str]:
    """Every environment name the settings class reads -> its field."""
    return {env.upper(): field for field in Settings.model_fields for env in env_names(field)}


def settings_from(environment: dict[str, str], monkeypatch) -> Settings:
    """The settings a container with exactly this environment gets."""
    for name in settings_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    return Settings(_env_file=None)


def healthcheck_url(service: dict) -> str:
    (url,) = [arg for arg in service["healthcheck"]["test"] if arg.startswith("http://")]
    return url


def nginx_config() -> list[dict]:
    parsed = crossplane.parse(str(DEPLOY / "nginx" / "nginx.conf"))
    assert parsed["status"] == "ok", parsed["errors"]
    return parsed["config"][0]["parsed"]


def directives(block: list[dict], name: str) -> list[dict]:
    """Every ``name`` directive in ``block`` and its nested blocks."""
    found = []
    for item in block:
        if item["directive"] == name:
            found.append(item)
        found += directives(item.get("block", []), name)
    return found


def nginx_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def nginx_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {None: 1, "s": 1, "ms": 0.001, "m": 60}[unit]


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory):
    """The routes of an app built by the factory, serving the iris model."""
    from predict import ModelRegistry
    from serve_http import create_app

    registry = ModelRegistry(REPO_ROOT / "models", ["iris"])
    registry.load_all()
    settings = Settings(_env_file=None, cache_backend="none", models=["iris"], jobs_dir=tmp_path_factory.mktemp("jobs"))
    app = create_app(settings, registry=registry)
    return {rule.rule for rule in app.url_map.iter_rules()}, app.test_client()


# --- the image -------------------------------------------------------------


def test_the_image_trains_what_make_models_trains():
    build = dockerfile_stages()[0]
    (train,) = [run for run in runs(build) if "training/" in run]
    steps = [step.strip() for step in train.split(";")]
    assert steps[0] == "set -e", "a failed training must fail the build"
    trained = []
    for step in steps[1:]:
        match = re.fullmatch(r"test -f (\S+) \|\| (.+)", step)
        assert match, f"not `test -f artifact || train`: {step}"
        trained.append((match[1], match[2]))
    assert trained == model_rules()


def test_torch_is_installed_alike_by_the_makefile_and_the_dockerfile():
    (make_line,) = [line for line in makefile_recipe("$(STAMP)") if "--extra-index-url" in line]
    make_line = make_line.replace("$$", "$").replace("$(TORCH_INDEX)", "${TORCH_INDEX}")
    build = dockerfile_stages()[0]
    (docker_line,) = [
        part.strip() for run in runs(build) for part in run.split("&&") if "--extra-index-url" in part
    ]
    assert docker_line == make_line
    # Both default to the same index.
    args = [value for instruction, value in build if instruction == "ARG" and value.startswith("TORCH_INDEX=")]
    assert args == ["TORCH_INDEX=" + makefile_variables()["TORCH_INDEX"]]
    # The line names exactly the torch pin of requirements.txt.
    (selector,) = re.findall(r'"(\$\(grep [^"]+\))"', docker_line)
    picked = subprocess.run(["sh", "-c", f'printf %s "{selector}"'], cwd=REPO_ROOT, capture_output=True, text=True)
    pins = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    assert picked.stdout in pins and re.fullmatch(r"torch==[\d.]+", picked.stdout)


def test_makefile_installs_the_tests_requirements_and_the_dockerfile_does_not():
    lines = [line for line in (REPO_ROOT / "requirements-dev.txt").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "-r requirements.txt"
    assert re.search(r"\bpip install (-q )?-r requirements-dev\.txt", " ".join(makefile_recipe("$(DEV_STAMP)")))
    assert "requirements-dev" not in " ".join(makefile_recipe("$(STAMP)"))  # make serve installs the runtime alone
    installed = set()
    copied = set()
    for stage in dockerfile_stages():
        for instruction, value in stage:
            if instruction == "RUN":
                installed |= set(re.findall(r"-r (\S+)", value))
            if instruction == "COPY" and "requirements" in value:
                copied |= {word for word in value.split() if word.startswith("requirements")}
    assert installed == copied == {"requirements.txt", "requirements-nodeps.txt"}


def test_the_runtime_stage_gets_the_venv_and_the_app_and_installs_nothing():
    stages = dockerfile_stages()
    assert len(stages) == 2
    runtime = stages[-1]
    assert runtime[0] == ("FROM", "python:3.11-slim AS runtime")
    for value in runs(runtime):
        assert not re.search(r"\b(pip|uv|requirements)", value), value
    copies = [value for instruction, value in runtime if instruction == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=build /app /app"]
    (user,) = [value for instruction, value in runtime if instruction == "USER"]
    assert any(re.search(rf"useradd .*--uid 10001 {user}$", run) for run in runs(runtime))
    instructions = [instruction for instruction, _ in runtime]
    assert instructions.index("USER") < instructions.index("CMD")
    assert ("CMD", '["python", "-m", "jobs.launch"]') in runtime
    (healthcheck,) = [value for instruction, value in runtime if instruction == "HEALTHCHECK"]
    assert "curl -fsS" in healthcheck and "/healthz" in healthcheck
    assert any(re.search(r"apt-get install .*\bcurl\b", run) for run in runs(runtime))


def test_no_test_or_benchmark_package_reaches_the_image():
    runtime = runtime_distributions()
    dev = requirement_names(REPO_ROOT / "requirements-dev.txt") | requirement_names(REPO_ROOT / "requirements-bench.txt")
    assert dev and not (dev & requirement_names(REPO_ROOT / "requirements.txt"))
    assert not (runtime & dev), f"runtime requirements pull test/bench packages: {sorted(runtime & dev)}"


def runtime_sources() -> list[Path]:
    files = [REPO_ROOT / name for name in RUNTIME_MODULES]
    for package in RUNTIME_PACKAGES:
        files += [path for path in (REPO_ROOT / package).rglob("*.py") if "__pycache__" not in path.parts]
    return files


def test_runtime_code_imports_only_runtime_packages():
    providers = metadata.packages_distributions()
    local = {*RUNTIME_PACKAGES, *(Path(name).stem for name in RUNTIME_MODULES)}
    runtime = runtime_distributions()
    checked = set()
    for path in runtime_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                dists = {canonicalize_name(d) for d in providers.get(top, [])}
                assert dists & runtime, f"{path.relative_to(REPO_ROOT)} imports {top} ({sorted(dists) or 'not installed'}): not a runtime requirement"
                checked.add(top)
    assert {"flask", "torch", "gunicorn", "boto3"} <= checked


def test_the_build_context_keeps_secrets_out_and_model_artifacts_in():
    matcher = PatternMatcher(dockerignore_patterns())
    for secret in (".env", ".env.production", "deploy/.env", "models/sentiment/.env"):
        assert matcher.matches(secret), f"{secret} would be copied into the image"
    for left_out in (".git/config", ".venv/bin/python", "var/jobs/jobs.db", "tests/test_deploy.py",
                     "bench/run.py", "api/__pycache__/routes.cpython-311.pyc", "postman/node_modules/a/index.js",
                     "requirements-dev.txt", "requirements-bench.txt", "scripts/gen_openapi.py", "postman/package.json",
                     ".schemathesis/report.json"):
        assert matcher.matches(left_out), left_out
    # Every artifact `make clean` deletes is one a user may train and ship.
    (clean,) = makefile_recipe("clean")
    artifacts = [word for word in clean.split() if word.startswith("models/*/")]
    assert len(artifacts) >= 8
    for artifact in artifacts:
        for name in ("sentiment", "my-model"):
            path = artifact.replace("*", name)
            assert not matcher.matches(path), f"{path} would be left out of the image"
    # And every file of the app in this checkout goes in (Docker's own walk).
    context = exclude_paths(str(REPO_ROOT), dockerignore_patterns())
    for source in runtime_sources() + [REPO_ROOT / "requirements.txt", REPO_ROOT / "requirements-nodeps.txt"]:
        assert str(source.relative_to(REPO_ROOT)) in context, source
    assert not [path for path in context if path.split(os.sep)[0] in ("tests", "bench", "scripts", ".git", ".venv", "var")]


# --- deploy/compose.yaml ---------------------------------------------------


def test_compose_runs_gunicorn_alone_on_web_and_the_job_worker_alone(compose):
    services = serve_services(compose)
    assert set(services) == {"web", "worker"}
    web, worker = services["web"], services["worker"]
    # jobs/launch.py's commands, less the interpreter's path; Gunicorn's
    # heartbeat files on tmpfs.
    command = list(web["command"])
    at = command.index("--worker-tmp-dir")
    assert command.pop(at + 1) == "/dev/shm" and command.pop(at)
    assert command == ["python", *COMMANDS["web"][1:]]
    assert worker["command"] == ["python", *COMMANDS["worker"][1:]]
    # Replicas share no host port: only the balancer publishes one.
    assert "ports" not in web and web["deploy"]["replicas"] >= 2
    assert all(s.get("image") == services["web"]["image"] for s in services.values())


def test_compose_sets_only_settings_the_service_reads(compose, monkeypatch):
    names = settings_names()
    readme = (REPO_ROOT / "README.md").read_text()
    for variable in LIBRARY_VARIABLES:
        assert variable in readme, f"{variable} is not documented"
    for service_name, service in serve_services(compose).items():
        environment = service["environment"]
        unknown = [name for name in environment if name.upper() not in names and name not in LIBRARY_VARIABLES]
        assert not unknown, f"{service_name}: not read by serving/settings.py: {unknown}"
        settings = settings_from(environment, monkeypatch)
        for name, value in environment.items():
            if name in LIBRARY_VARIABLES:
                continue
            field = names[name.upper()]
            expected = getattr(Settings(_env_file=None, **{field: value}), field)
            assert getattr(settings, field) == expected, f"{service_name}: {name}={value!r} did not reach {field}"


def test_web_port_health_check_and_balancer_agree_with_the_app(compose, monkeypatch, app_routes, tmp_path):
    routes, client = app_routes
    web = compose["services"]["web"]
    settings = settings_from(web["environment"], monkeypatch)
    # The address gunicorn.conf.py binds with this environment (its metrics
    # and control folders moved to tmp_path, so no running server is touched).
    env = {**{k: v for k, v in os.environ.items() if k.upper() not in settings_names()}, **web["environment"],
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "SERVE_CONTROL_DIR": str(tmp_path / "control")}
    bind = subprocess.run(
        [sys.executable, "-c", "import runpy; print(runpy.run_path('gunicorn.conf.py')['bind'])"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert bind == f"{settings.host}:{settings.port}"
    port = settings.port
    assert web["expose"] == [str(port)]
    url = urlparse(healthcheck_url(web))
    assert url.port == port and url.path in routes
    assert client.get(url.path).status_code == 200
    # nginx: one upstream, the web service on that port, re-resolved as replicas come and go.
    config = nginx_config()
    (upstream,) = directives(config, "upstream")
    (server,) = directives(upstream["block"], "server")
    host, upstream_port = server["args"][0].rsplit(":", 1)
    assert host in compose["services"] and host == "web" and int(upstream_port) == port
    assert "resolve" in server["args"] and directives(config, "resolver")
    (listen,) = directives(config, "listen")
    lb = compose["services"]["lb"]
    assert [p.rsplit(":", 1)[1] for p in lb["ports"]] == listen["args"]
    lb_url = urlparse(healthcheck_url(lb))
    assert (lb_url.port or 80) == int(listen["args"][0]) and lb_url.path in routes


def test_nginx_limits_match_the_web_settings(compose, monkeypatch):
    settings = settings_from(compose["services"]["web"]["environment"], monkeypatch)
    config = nginx_config()
    (body,) = directives(config, "client_max_body_size")
    assert nginx_bytes(body["args"][0]) == settings.max_body_bytes
    (read,) = directives(config, "proxy_read_timeout")
    # The service's own deadlines answer before nginx gives up.
    assert nginx_seconds(read["args"][0]) > max(settings.timeout, settings.stream_idle_timeout_s)
    (upstream,) = directives(config, "upstream")
    (idle,) = directives(upstream["block"], "keepalive_timeout")
    assert nginx_seconds(idle["args"][0]) < settings.keepalive
    # nginx's own errors are the service's JSON envelope.
    named = {item["args"][0]: item["block"] for item in directives(config, "location") if item["args"][0].startswith("@")}
    pages = directives(config, "error_page")
    assert {page["args"][0] for page in pages} >= {"413", "502", "504"}
    for page in pages:
        (answer,) = directives(named[page["args"][-1]], "return")
        assert answer["args"][0] == page["args"][0]
        # nginx reads \n in a quoted string as a newline; crossplane keeps it as written.
        error = json.loads(answer["args"][1].replace("\\n", "\n").replace("$rid", "x"))["error"]
        assert set(error) == {"code", "message", "details", "request_id"}
        if page["args"][0] == "413":
            assert error["details"]["limit"] == settings.max_body_bytes


def test_every_service_is_health_checked_and_pinned(compose):
    services = compose["services"]
    for name, service in services.items():
        image = service["image"]
        if name not in serve_services(compose):
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert re.search(r"\d", tag) and tag != "latest", f"{name}: image {image} is not pinned"
        waits = [s["depends_on"][name]["condition"] for s in services.values() if name in s.get("depends_on", {})]
        if service.get("restart") == "no":  # a one-shot: its exit code is its health
            assert "healthcheck" not in service and waits and set(waits) == {"service_completed_successfully"}
        else:
            assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"


def test_mounted_files_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_scrapes_every_web_replica(compose, monkeypatch, app_routes):
    routes, client = app_routes
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"serve-http", "serve-http-jobs"}
    job = jobs["serve-http"]
    assert job["metrics_path"] in routes and client.get(job["metrics_path"]).status_code == 200
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["web"] and discovery["type"] == "A"
    settings = settings_from(compose["services"]["web"]["environment"], monkeypatch)
    assert discovery["port"] == settings.port
    # Every job worker, on the port its exporter listens on.
    (workers,) = jobs["serve-http-jobs"]["dns_sd_configs"]
    worker = compose["services"]["worker"]
    port = settings_from(worker["environment"], monkeypatch).job_metrics_port
    assert workers["names"] == ["worker"] and workers["port"] == port and str(port) in worker["expose"]
    assert "--enable-feature=exemplar-storage" in compose["services"]["prometheus"]["command"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in compose["services"]["prometheus"]["volumes"]


def test_grafana_gets_the_shipped_dashboard_on_the_provisioned_data_source(compose, tmp_path):
    grafana = compose["services"]["grafana"]
    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    by_type = {source["type"]: source for source in sources}
    datasource, jaeger = by_type["prometheus"], by_type["jaeger"]
    url = urlparse(datasource["url"])
    prometheus = compose["services"]["prometheus"]
    assert url.hostname == "prometheus" and str(url.port) in {p.rsplit(":", 1)[1] for p in prometheus["ports"]}
    # Exemplars (label trace_id, serving/exemplars.py) open their trace in the Jaeger the services send to.
    (link,) = datasource["jsonData"]["exemplarTraceIdDestinations"]
    assert link == {"name": "trace_id", "datasourceUid": jaeger["uid"]}
    jaeger_url = urlparse(jaeger["url"])
    assert jaeger_url.hostname == "jaeger" and str(jaeger_url.port) in {p.rsplit(":", 1)[1] for p in compose["services"]["jaeger"]["ports"]}
    endpoint = urlparse(serve_services(compose)["web"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "jaeger" and str(endpoint.port) in compose["services"]["jaeger"]["expose"]
    (provider,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "serve-http.yml").read_text())["providers"]
    mounts = dict(volume.split(":")[1::-1] for volume in grafana["volumes"])  # container path -> source
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    # Run the container's own command, its paths moved under tmp_path.
    (shipped,) = [target for target, source in mounts.items() if source == "./grafana/serve-http.json"]
    (command,) = grafana["command"]
    assert command.endswith("&& exec /run.sh") and provider["options"]["path"] in command
    script = command.removesuffix("&& exec /run.sh")
    script = script.replace(shipped, str(DEPLOY / "grafana" / "serve-http.json"))
    script = script.replace(provider["options"]["path"], str(tmp_path / "dashboards"))
    subprocess.run(["sh", "-c", script], check=True)
    dashboard = json.loads((tmp_path / "dashboards" / "serve-http.json").read_text())
    uids = [panel["datasource"]["uid"] for panel in dashboard["panels"]]
    uids += [target["datasource"]["uid"] for panel in dashboard["panels"] for target in panel["targets"]]
    uids += [variable["datasource"]["uid"] for variable in dashboard["templating"]["list"]]
    assert uids and set(uids) == {datasource["uid"]}
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{provider['options']['path']}/serve-http.json"


# --- deploy/*.service: the systemd units -----------------------------------

UNITS = {"web": DEPLOY / "serve-http-web.service", "worker": DEPLOY / "serve-http-worker.service"}


def systemd_unit(path: Path) -> configparser.ConfigParser:
    # strict: a key set twice in a section fails (systemd would take the last, or add them up).
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(path.read_text(), str(path))
    return parser


def systemd_seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|min)", value).groups()
    return int(number) * {"s": 1, "min": 60}[unit]


def test_the_systemd_units_run_the_launchers_commands_from_one_checkout(compose):
    units = {name: systemd_unit(path) for name, path in UNITS.items()}
    (root,) = {unit["Service"]["WorkingDirectory"] for unit in units.values()}
    (environment_file,) = {unit["Service"]["EnvironmentFile"] for unit in units.values()}
    (user,) = {(unit["Service"]["User"], unit["Service"]["Group"]) for unit in units.values()}
    assert root.startswith("/") and environment_file.startswith("-/")  # optional: the checkout's .env may do
    for name, unit in units.items():
        service = unit["Service"]
        argv = shlex.split(service["ExecStart"])
        # jobs/launch.py's command, run by the checkout's own venv.
        assert argv == [f"{root}/.venv/bin/python", *COMMANDS[name][1:]]
        module = argv[argv.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, module
        assert service["Restart"] == "on-failure" and 0 < systemd_seconds(service["RestartSec"]) <= 30
        assert service["KillSignal"] == "SIGTERM"
        assert unit["Unit"]["StartLimitIntervalSec"] == "0"  # never gives up, as the launcher
        assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert importlib.util.find_spec(COMMANDS["web"][-1].split(":")[0]) is not None  # serve_http
    web, worker = units["web"]["Service"], units["worker"]["Service"]
    # Gunicorn drains its requests for GRACEFUL_TIMEOUT before systemd kills
    # what is left, and waits as long as compose's web service does.
    stop = systemd_seconds(web["TimeoutStopSec"])
    assert stop > Settings(_env_file=None).graceful_timeout
    assert f"{stop}s" == compose["services"]["web"]["stop_grace_period"]
    assert web["KillMode"] == "mixed" and web["ExecReload"] == "/bin/kill -s HUP $MAINPID"
    # Type=notify: the master says READY=1 itself once the app is preloaded.
    import gunicorn.arbiter

    assert web["Type"] == "notify" and "READY=1" in inspect.getsource(gunicorn.arbiter.Arbiter.start)
    # The worker stops about 1 s after SIGTERM (huey gives its processes 1 s);
    # the whole group gets it, so a killed consumer's job processes too.
    assert 1 < systemd_seconds(worker["TimeoutStopSec"]) <= int(compose["services"]["worker"]["stop_grace_period"].rstrip("s"))
    assert worker["KillMode"] == "control-group"
    # `make worker` and compose's worker run the same command, and compose restarts it too.
    assert makefile_recipe("worker") == [" ".join(["python", *COMMANDS["worker"][1:]])]
    assert compose["services"]["worker"]["restart"] == "unless-stopped"


def test_systemd_accepts_the_units_against_this_checkout(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    root = systemd_unit(UNITS["worker"])["Service"]["WorkingDirectory"]
    for path in UNITS.values():
        (tmp_path / path.name).write_text(path.read_text().replace(root, str(REPO_ROOT)))
    done = subprocess.run([analyze, "verify", *(str(tmp_path / path.name) for path in UNITS.values())],
                          capture_output=True, text=True, timeout=60)
    # An unknown key or a bad value is only a warning to systemd: none either.
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout + done.stderr
