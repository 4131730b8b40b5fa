"""API keys (named, from env or file), public route groups, and CORS."""

from __future__ import annotations

import logging

import pytest

from serve_http import create_app
from serving.settings import Settings, load_settings
from tests.api.test_routes import error_of

BODY = {"text": "a warm, funny film"}


def keyed_client(settings, registry, **update):
    return create_app(settings.model_copy(update=update), registry=registry).test_client()


# --- settings ---------------------------------------------------------------------------


def test_named_keys_from_env_and_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-11\nalice:def456\n\nbob   ghi789\n")
    s = Settings(_env_file=None, api_keys="ci:abc123,bare-one", api_keys_file=keys_file)
    assert s.named_api_keys() == {"ci": "abc123", "key1": "bare-one", "alice": "def456", "bob": "ghi789"}


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"SERVE_API_KEYS": "ci:abc,ci:def"}, "duplicate key name 'ci'"),
        ({"SERVE_API_KEYS": "ci:"}, "key 'ci' is empty"),
        ({"SERVE_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read SERVE_API_KEYS_FILE"),
        ({"SERVE_API_KEYS_FILE": "/dev/null"}, "lists no key"),
        ({"SERVE_CORS_ORIGINS": "*", "SERVE_CORS_ALLOW_CREDENTIALS": "true"}, "cannot be combined"),
        ({"SERVE_PUBLIC_ROUTES": "health,admin"}, "unknown route group"),
    ],
)
def test_bad_security_settings_stop_start_with_one_line(monkeypatch, env, reason):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stopped:
        load_settings(_env_file=None)
    message = str(stopped.value)
    assert reason in message and "\n" not in message
    assert "abc" not in message and "def" not in message  # never the key itself


def test_settings_repr_hides_keys():
    s = Settings(_env_file=None, api_keys="ci:super-secret-1")
    assert "super-secret-1" not in repr(s) and "super-secret-1" not in str(s)


# --- authentication ----------------------------------------------------------------------


def test_each_named_key_works_in_either_header(settings, registry, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("alice def456\n")
    app = create_app(
        settings.model_copy(update={"api_keys": ["ci:abc123"], "api_keys_file": keys_file}), registry=registry
    )
    seen = []

    @app.after_request
    def note(response):
        from flask import g

        seen.append(g.get("api_key_name"))
        return response

    client = app.test_client()
    assert client.post("/v1/classify", json=BODY, headers={"X-Api-Token": "abc123"}).status_code == 200
    assert client.post("/v1/classify", json=BODY, headers={"Authorization": "Bearer def456"}).status_code == 200
    assert client.post("/v1/classify", json=BODY, headers={"Authorization": "bearer   def456 "}).status_code == 200
    assert seen == ["ci", "alice", "alice"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Api-Token": ""},
        {"X-Api-Token": "abc12"},
        {"X-Api-Token": "abc1234"},
        {"X-Api-Token": "ci:abc123"},
        {"X-Api-Token": "ci"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic abc123"},
        {"Authorization": "abc123"},
        {"X-Api-Token": "é" * 50},
        {"X-Api-Token": "x" * 4000},
    ],
)
def test_wrong_keys_get_the_same_401(settings, registry, headers):
    client = keyed_client(settings, registry, api_keys=["ci:abc123"])
    r = client.post("/v1/classify", json=BODY, headers=headers)
    error = error_of(r, 401)
    # The same answer whatever was wrong: nothing hints which part failed.
    assert (error["code"], error["message"], error["details"]) == ("unauthorized", "missing or invalid API key", [])
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="serve-http"'


def test_401_comes_before_body_checks(settings, registry):
    client = keyed_client(settings, registry, api_keys=["abc123"])
    r = client.post("/v1/classify", data="not json", content_type="text/plain")
    assert error_of(r, 401)["code"] == "unauthorized"


def test_public_groups_are_configurable(settings, registry):
    default = keyed_client(settings, registry, api_keys=["abc123"])
    for path in ("/healthz", "/readyz", "/healthCheck", "/apidoc/openapi.json", "/apidoc/swagger"):
        assert default.get(path).status_code == 200, path
    assert default.get("/info").status_code == 401
    assert default.get("/v1/models").status_code == 401

    closed = keyed_client(settings, registry, api_keys=["abc123"], public_routes=["health"])
    assert closed.get("/healthz").status_code == 200
    assert closed.get("/apidoc/openapi.json").status_code == 401
    assert closed.get("/apidoc/openapi.json", headers={"X-Api-Token": "abc123"}).status_code == 200

    none = keyed_client(settings, registry, api_keys=["abc123"], public_routes=[])
    assert none.get("/healthz").status_code == 401


def test_keys_never_reach_the_log(settings, registry, caplog):
    client = keyed_client(settings, registry, api_keys=["ci:topsecret-key-42"])
    with caplog.at_level(logging.DEBUG):
        client.post("/v1/classify", json=BODY, headers={"X-Api-Token": "topsecret-key-42"})
        client.post("/v1/classify", json=BODY, headers={"X-Api-Token": "wrong-secret-43"})
    assert "topsecret-key-42" not in caplog.text and "wrong-secret-43" not in caplog.text


# --- CORS ------------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def test_no_cors_headers_by_default(client):
    r = client.get("/healthz", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_preflight_needs_no_key_and_names_the_origin(settings, registry):
    client = keyed_client(settings, registry, api_keys=["abc123"], cors_origins=[ORIGIN])
    r = client.options(
        "/v1/classify",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-token",
        },
    )
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "x-api-token" in r.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_errors_carry_cors_headers_and_other_origins_get_none(settings, registry):
    client = keyed_client(settings, registry, api_keys=["abc123"], cors_origins=[ORIGIN])
    r = client.post("/v1/classify", json=BODY, headers={"Origin": ORIGIN})
    error_of(r, 401)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in r.headers["Access-Control-Expose-Headers"]
    r = client.post("/v1/classify", json={"txt": 1}, headers={"Origin": ORIGIN, "X-Api-Token": "abc123"})
    error_of(r, 422)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    r = client.post("/v1/classify", json=BODY, headers={"Origin": "https://evil.example", "X-Api-Token": "abc123"})
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers


def test_credentials_only_with_named_origins(settings, registry):
    client = keyed_client(settings, registry, cors_origins=[ORIGIN], cors_allow_credentials=True)
    r = client.get("/healthz", headers={"Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    anyone = keyed_client(settings, registry, cors_origins=["*"])
    r = anyone.get("/healthz", headers={"Origin": ORIGIN})
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in r.headers


def vary_of(response) -> list[str]:
    """The Vary header's tokens, over every Vary line of the response."""
    return [token.strip() for line in response.headers.getlist("Vary") for token in line.split(",") if token.strip()]


PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}


@pytest.mark.parametrize("origins", [[ORIGIN], [ORIGIN, "https://other.example.com"]])
def test_listed_origins_answer_vary_origin_to_every_origin(settings, registry, origins):
    client = keyed_client(settings, registry, api_keys=["abc123"], cors_origins=origins)
    key = {"X-Api-Token": "abc123"}
    answers = {
        "allowed": client.post("/v1/classify", json=BODY, headers={"Origin": ORIGIN, **key}),
        "disallowed": client.post("/v1/classify", json=BODY, headers={"Origin": "https://evil.example", **key}),
        "no origin": client.post("/v1/classify", json=BODY, headers=key),
        "allowed preflight": client.options("/v1/classify", headers={"Origin": ORIGIN, **PREFLIGHT}),
        "disallowed preflight": client.options("/v1/classify", headers={"Origin": "https://evil.example", **PREFLIGHT}),
        "error": client.post("/v1/classify", json=BODY, headers={"Origin": ORIGIN}),
        "seed route": client.get("/info", headers={"Origin": "https://evil.example"}),
    }
    assert {name: vary_of(r) for name, r in answers.items()} == {name: ["Origin"] for name in answers}
    assert answers["allowed"].headers["Access-Control-Allow-Origin"] == ORIGIN
    assert answers["allowed preflight"].headers["Access-Control-Allow-Origin"] == ORIGIN
    for name in ("disallowed", "no origin", "disallowed preflight", "seed route"):
        assert "Access-Control-Allow-Origin" not in answers[name].headers, name
    assert answers["error"].status_code == 401


@pytest.mark.parametrize("origins", [["*"], []])
def test_one_answer_for_every_origin_needs_no_vary(settings, registry, origins):
    client = keyed_client(settings, registry, cors_origins=origins)
    for origin in (ORIGIN, "https://evil.example"):
        # /info: the seed's route, "*" when no origin is listed; /v1/classify: "*" or no CORS at all.
        seed = client.get("/info", headers={"Origin": origin})
        preflight = client.options("/info", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        classify = client.post("/v1/classify", json=BODY, headers={"Origin": origin})
        assert seed.headers["Access-Control-Allow-Origin"] == "*"
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert classify.headers.get("Access-Control-Allow-Origin") == ("*" if origins else None)
        assert [vary_of(seed), vary_of(preflight), vary_of(classify)] == [[], [], []]
