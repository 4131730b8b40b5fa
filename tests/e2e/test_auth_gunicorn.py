"""API keys through a real Gunicorn: rotation by editing the keys file and
sending SIGHUP, and no key ever written to a log."""

from __future__ import annotations

import signal

import pytest
import requests
import yaml

from serving.settings import REPO_ROOT

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

OLD, NEW, WRONG = "old-key-5f2c9a71", "new-key-8d41e0b3", "wrong-key-77aa01"
BODY = {"text": "a warm, funny film"}


def status(server, key: str) -> int:
    return requests.post(server.url + "/prediction", json=BODY, headers={"X-Api-Token": key}, timeout=10).status_code


def hup(server) -> None:
    old = server.worker_pids()
    server.signal(signal.SIGHUP)
    server.wait_for(
        lambda: (lambda pids: len(pids) == 2 and not pids & old)(server.worker_pids()), 60, "HUP swaps the workers"
    )


def test_keys_rotate_with_sighup_and_never_reach_the_logs(model_repo, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text(f"# name key\nci {OLD}\n")
    env = {"SERVE_MODEL_REPOSITORY": str(model_repo), "WORKERS": "2", "SERVE_API_KEYS_FILE": str(keys), "LOG_LEVEL": "debug"}
    with GunicornServer(tmp_path, env=env) as server:
        assert (status(server, OLD), status(server, NEW), status(server, WRONG)) == (200, 401, 401)
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200  # public by default

        keys.write_text(f"ci {OLD}\nci-2026 {NEW}\n")  # 1. add the new key
        hup(server)
        assert [status(server, OLD) for _ in range(4)] == [200] * 4  # both work during the move
        assert [status(server, NEW) for _ in range(4)] == [200] * 4

        keys.write_text(f"ci-2026 {NEW}\n")  # 2. remove the old one
        hup(server)
        assert [status(server, OLD) for _ in range(4)] == [401] * 4
        assert [status(server, NEW) for _ in range(4)] == [200] * 4

        keys.write_text("# emptied by mistake\n")  # 3. an emptied file keeps the last good keys
        hup(server)
        assert status(server, NEW) == 200 and status(server, WRONG) == 401

        r = requests.post(server.url + "/prediction", json=BODY, headers={"Authorization": f"Bearer {WRONG}"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["message"] == "missing or invalid API key"
        assert_every_route_refuses_without_a_key(server)
    logs = server.log() + server.access_log.read_text()
    assert "lists no key" in logs  # the worker said why it kept the old keys
    for key in (OLD, NEW, WRONG):
        assert key not in logs


PUBLIC = {
    "/healthz", "/readyz", "/healthCheck", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
}


def assert_every_route_refuses_without_a_key(server) -> None:
    """Every operation of openapi.yml but the public ones is 401 without a key,
    and documents that 401."""
    paths = yaml.safe_load((REPO_ROOT / "openapi.yml").read_text())["paths"]
    checked = 0
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert "401" in operation["responses"], f"{method.upper()} {path} does not document 401"
            url = server.url + path.replace("{name}", "faces").replace("{version}", "1")
            r = requests.request(method, url, json={}, timeout=10)
            expected = 200 if path in PUBLIC else 401
            assert r.status_code == expected, (method, path, r.status_code)
            checked += 1
    assert checked >= 15
