"""Process faults against a real Gunicorn under load from a second process.

Each test prints its figures (requests sent, failed, recovery time) on the
terminal, outside pytest's capture, so they show in CI logs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from serving.settings import REPO_ROOT
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

SLOW_MANIFEST = {
    "task": "text-classification",
    "adapter": "tests.slow_adapter:SlowClassifier",
    "description": "Sleeps as told: tests only.",
    "batching": {"max_batch_size": 1, "max_wait_ms": 0, "max_queue": 64},
}


def slow_repo(root: Path) -> Path:
    """sentiment, faces and the slow test model."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("sentiment", "faces"):
        shutil.copytree(REPO_ROOT / "models" / name, root / name)
    (root / "slow").mkdir()
    (root / "slow" / "model.yaml").write_text(yaml.safe_dump(SLOW_MANIFEST))
    return root


def show(capsys, test: str, **figures) -> str:
    line = f"[{test}] " + ", ".join(f"{k}={v}" for k, v in figures.items())
    with capsys.disabled():
        print("\n" + line)
    return line


class Load:
    """tests/e2e/load.py in its own process, stopped by a file."""

    def __init__(
        self,
        tmp: Path,
        url: str,
        path: str,
        body: dict,
        concurrency: int = 6,
        count: int = 0,
        keep_alive: bool = False,
        field: str | None = None,
    ) -> None:
        self.out = tmp / f"load-{time.monotonic_ns()}.json"
        self.stop_file = tmp / f"stop-{time.monotonic_ns()}"
        command = [sys.executable, "-m", "tests.e2e.load", url, path, json.dumps(body), str(self.out),
                   "--concurrency", str(concurrency), "--stop-file", str(self.stop_file), "--count", str(count)]
        if keep_alive:
            command.append("--keep-alive")
        if field:
            command += ["--field", field]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT)

    def finish(self, timeout: float = 120) -> list[dict]:
        self.stop_file.touch()
        assert self.process.wait(timeout=timeout) == 0
        return json.loads(self.out.read_text())


def failed(records: list[dict]) -> list[dict]:
    return [r for r in records if r["error"] or r["status"] != 200]


# --- kill -9, HUP -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    env = {
        "SERVE_MODEL_REPOSITORY": str(slow_repo(tmp / "models")),
        "WORKERS": "3",
        "THREADS": "2",
        "SERVE_CACHE_BACKEND": "none",
        "SERVE_BATCHING": "false",
        "SLOW_ADAPTER_LOG": str(tmp / "slow-calls.log"),
    }
    with GunicornServer(tmp, env=env) as server:
        server.slow_calls = tmp / "slow-calls.log"
        yield server


BUSY = {"text": "sleep:0.05", "model": "slow"}  # 50 ms of "inference" per request


def test_kill_9_of_a_worker_loses_only_its_in_flight_requests(server, tmp_path, capsys):
    load = Load(tmp_path, server.url, "/v1/classify", BUSY, concurrency=6)
    try:
        server.wait_for(lambda: server.access_count("/v1/classify") >= 30, 60, "load under way")
        workers = server.worker_pids()
        victim = min(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        replaced = server.wait_for(
            lambda: (lambda pids: len(pids) == 3 and victim not in pids and pids)(server.worker_pids()),
            30, "the master replaces the killed worker",
        )
        replaced_after = time.monotonic() - killed_at
        done = server.access_count("/v1/classify")
        server.wait_for(lambda: server.access_count("/v1/classify") >= done + 30, 60, "load goes on")
    finally:
        records = load.finish()
    lost = failed(records)
    in_flight = [r for r in records if r["start"] <= killed_at < r["end"]]
    # Calls the victim began in the model minus the answers it gave: what it was
    # computing when it died (connections it had accepted but not begun come on top).
    began = sum(line.split()[0] == str(victim) for line in server.slow_calls.read_text().splitlines())
    answered = sum(r["pid"] == victim and r["route"] == "/v1/classify" for r in server.access_records())
    victim_busy = began - answered
    after = [r for r in records if r["start"] >= killed_at and r["status"] == 200]
    recovery = min(r["end"] for r in after) - killed_at
    figures = show(
        capsys, "kill -9", sent=len(records), failed=len(lost), in_flight_at_kill=len(in_flight),
        victim_computing=victim_busy,
        recovery_s=round(recovery, 3), worker_replaced_s=round(replaced_after, 3),
    )
    assert len(replaced - workers) == 1, figures
    # Only requests that were in flight when the worker died may fail ...
    assert all(r["start"] <= killed_at for r in lost), figures
    assert len(lost) <= len(in_flight), figures
    # ... and the service answers again within 2 s.
    assert recovery < 2.0, figures


@pytest.mark.parametrize("keep_alive", [False, True], ids=["new-connections", "keep-alive"])
def test_sighup_under_load_fails_nothing(server, tmp_path, capsys, keep_alive):
    load = Load(tmp_path, server.url, "/v1/classify", BUSY, concurrency=6, keep_alive=keep_alive)
    try:
        server.wait_for(lambda: server.access_count("/v1/classify") >= 30, 60, "load under way")
        old = server.worker_pids()
        hup_at = time.monotonic()
        server.signal(signal.SIGHUP)
        new = server.wait_for(
            lambda: (lambda pids: len(pids) == 3 and not pids & old and pids)(server.worker_pids()),
            60, "HUP replaces every worker",
        )
        swapped = time.monotonic() - hup_at
        done = server.access_count("/v1/classify")
        server.wait_for(lambda: server.access_count("/v1/classify") >= done + 30, 60, "new workers answer")
    finally:
        records = load.finish()
    lost = failed(records)
    figures = show(
        capsys, "SIGHUP", keep_alive=keep_alive, sent=len(records), failed=len(lost), workers_swapped_s=round(swapped, 3)
    )
    assert len(new) == 3, figures
    assert lost == [], f"{figures}: {lost[:3]}"


# --- deadlines ------------------------------------------------------------------------------


def test_inference_past_its_deadline_is_504_and_the_worker_stays_healthy(tmp_path, capsys):
    env = {
        "SERVE_MODEL_REPOSITORY": str(slow_repo(tmp_path / "models")),
        "WORKERS": "1",
        "THREADS": "4",
        "SERVE_INFERENCE_TIMEOUT_MS": "1000",
    }
    with GunicornServer(tmp_path, env=env) as server:
        (worker,) = server.worker_pids()
        started = time.monotonic()
        r = requests.post(server.url + "/v1/classify", json={"text": "sleep:4", "model": "slow"}, timeout=30)
        cut_after = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "deadline_exceeded"
        # The same worker answers other models at once ...
        normal = requests.post(server.url + "/v1/classify", json={"text": "a warm, funny film"}, timeout=10)
        assert normal.status_code == 200 and normal.json()["category"] == "fresh"
        # ... and the slow model again once its stuck call has ended.
        again = server.wait_for(
            lambda: (lambda r: r.status_code == 200 and r)(
                requests.post(server.url + "/v1/classify", json={"text": "quick", "model": "slow"}, timeout=30)
            ),
            30, "the slow model answers again",
        )
        assert again.json()["category"] == "done"
        assert server.worker_pids() == {worker}, "no worker was killed or replaced"
    show(capsys, "deadline", timeout_ms=1000, answered_504_after_s=round(cut_after, 3))
    assert cut_after < 4, "cut off before the model finished"


# --- SIGTERM --------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(tmp_path, capsys):
    started_log = tmp_path / "slow-calls.log"
    env = {
        "SERVE_MODEL_REPOSITORY": str(slow_repo(tmp_path / "models")),
        "WORKERS": "2",
        "THREADS": "2",
        "SERVE_BATCHING": "false",
        "SERVE_CACHE_BACKEND": "none",
        "GRACEFUL_TIMEOUT": "15",
        "SLOW_ADAPTER_LOG": str(started_log),
    }
    server = GunicornServer(tmp_path, env=env).start()
    try:
        load = Load(tmp_path, server.url, "/v1/classify", {"text": "sleep:3", "model": "slow"}, concurrency=4, count=4)
        server.wait_for(
            lambda: started_log.exists() and len(started_log.read_text().splitlines()) == 4,
            60, "four slow requests in flight",
        )
        term_at = time.monotonic()
        server.signal(signal.SIGTERM)
        status = server.wait_exit(timeout=15 + 30)
        exit_after = time.monotonic() - term_at
        records = load.finish()
    finally:
        server.stop()
    lost = failed(records)
    figures = show(
        capsys, "SIGTERM", in_flight=4, sent=len(records), failed=len(lost), exit_status=status,
        exit_after_s=round(exit_after, 3), graceful_timeout_s=15,
    )
    assert status == 0, figures
    assert len(records) == 4 and lost == [], f"{figures}: {lost}"
    assert exit_after < 15 + 10, figures


# --- broken models at start-up ----------------------------------------------------------------


def broken_repo(root: Path, optional: bool) -> Path:
    slow_repo(root)
    manifest = yaml.safe_load((root / "sentiment" / "model.yaml").read_text())
    manifest["optional"] = optional
    (root / "sentiment" / "model.yaml").write_text(yaml.safe_dump(manifest))
    (root / "sentiment" / "model.joblib").write_bytes(b"not the trained model")
    return root


def test_corrupt_required_model_stops_start_up_with_one_line(tmp_path, capsys):
    env = {"SERVE_MODEL_REPOSITORY": str(broken_repo(tmp_path / "models", optional=False)), "WORKERS": "1"}
    server = GunicornServer(tmp_path, env=env).start(wait_ready=False)
    try:
        status = server.wait_exit(timeout=120)
    finally:
        server.stop()
    log = server.log()
    reasons = [line for line in log.splitlines() if "cannot start" in line]
    show(capsys, "corrupt model", exit_status=status, reason=reasons)
    assert status != 0
    assert len(reasons) == 1 and "model 'sentiment'" in reasons[0] and "model.joblib" in reasons[0], log
    assert "Traceback" not in log, log


def test_corrupt_optional_model_is_named_by_readyz(tmp_path):
    env = {
        "SERVE_MODEL_REPOSITORY": str(broken_repo(tmp_path / "models", optional=True)),
        "WORKERS": "1",
        "SERVE_DEFAULT_CLASSIFIER": "slow",
    }
    with GunicornServer(tmp_path, env=env) as server:
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 200
        state = ready.json()["models"]["sentiment"]
        assert state["ready"] is False and state["optional"] is True
        assert "checksum mismatch for model.joblib" in state["reason"]
        cards = {m["name"]: m["ready"] for m in requests.get(server.url + "/v1/models", timeout=10).json()["models"]}
        assert cards == {"faces": True, "sentiment": False, "slow": True}
        r = requests.post(server.url + "/v1/classify", json={"text": "fine", "model": "sentiment"}, timeout=10)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert r.headers["Retry-After"]
        assert requests.post(server.url + "/v1/classify", json={"text": "fine"}, timeout=10).status_code == 200


# --- bad input through Gunicorn itself -----------------------------------------------------------
# (malformed, oversized and slow requests, which the worker answers itself: tests/e2e/test_slow_clients.py)


def test_catalogue_subset_through_gunicorn(server):
    from tests.api.test_bad_input import CASES

    names = [
        "invalid-base64", "truncated-jpeg", "png-decompression-bomb", "gif-decompression-bomb",
        "eps-not-allowed", "threshold-above-one", "nan-literal", "non-utf8-body", "deeply-nested-json",
        "one-megabyte-text", "body-over-limit", "text-plain-content-type", "unknown-model-predict",
        "get-on-post-route", "empty-requests", "batch-over-limit",
    ]

    def send(name: str):
        case = CASES[name]
        headers = dict(case.headers)
        if case.content_type:
            headers["Content-Type"] = case.content_type
        return name, requests.request(
            case.method, server.url + case.path, json=case.json, data=case.data, headers=headers, timeout=60
        )

    with ThreadPoolExecutor(4) as pool:
        for name, r in pool.map(send, names):
            case = CASES[name]
            assert r.status_code == case.status, (name, r.text[:300])
            assert r.json()["error"]["code"] == case.code, name
            assert r.json()["error"]["request_id"] == r.headers["X-Request-ID"]
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
