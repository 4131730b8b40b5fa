"""Frames/s and end-to-end latency of ``/v1/detect/stream`` through a real Gunicorn.

    .venv/bin/python bench/stream.py [--seconds 15] [--fps 30] [--model faces]

Starts Gunicorn with the default settings (gthread worker class, THREADS and
WORKERS from ``serving.settings``) serving one detection model, and streams the
scikit-image astronaut as 640x480 JPEG frames (57 KB) from a Python
WebSocket client (websocket-client), in two ways:

- closed loop: the next frame leaves when the previous answer arrived; the
  rate the model sustains for one stream, and its latency with no frame waiting;
- camera: frames at ``--fps`` whatever the answers (a webcam); the server keeps
  only the newest waiting frame, so latency stays about one to two model runs
  and the rest is dropped.

Latency is end to end: from just before the client sends a frame to the arrival
of that frame's answer. Binds 127.0.0.1 only; every loop is bounded in time and
the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import websocket
from PIL import Image
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import BIN, Server, free_port  # noqa: E402
from serving.settings import Settings  # noqa: E402


def astronaut_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((640, 480)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def connect(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=60)
    assert json.loads(ws.recv())["type"] == "ready"
    return ws


def closed_loop(url: str, frame: bytes, seconds: float) -> dict:
    ws = connect(url)
    latencies, model_ms = [], []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        sent = time.monotonic()
        ws.send_binary(frame)
        answer = json.loads(ws.recv())
        assert answer["type"] == "detections", answer
        latencies.append(time.monotonic() - sent)
        model_ms.append(answer["model_ms"])
    elapsed = time.monotonic() - started
    ws.close()
    return {"processed": len(latencies), "rate": len(latencies) / elapsed, "latencies": latencies, "model_ms": model_ms}


def camera(url: str, frame: bytes, seconds: float, fps: float) -> dict:
    ws = connect(url)
    sent_at: dict[int, float] = {}
    done = threading.Event()

    def send() -> None:
        seq, start = 0, time.monotonic()
        while time.monotonic() - start < seconds:
            seq += 1
            sent_at[seq] = time.monotonic()
            ws.send_binary(frame)
            # Pace like a camera: the next frame is due at start + seq / fps.
            time.sleep(max(0.0, start + seq / fps - time.monotonic()))
        done.set()

    sender = threading.Thread(target=send)
    started = time.monotonic()
    sender.start()
    latencies, last = [], None
    while True:
        answer = json.loads(ws.recv())
        assert answer["type"] == "detections", answer
        latencies.append(time.monotonic() - sent_at[answer["frame"]])
        last = answer
        if done.is_set() and answer["frame"] == len(sent_at):
            break
    elapsed = time.monotonic() - started
    sender.join()
    ws.close()
    return {
        "sent": len(sent_at),
        "processed": last["processed"],
        "dropped": last["dropped"],
        "rate": last["processed"] / elapsed,
        "latencies": latencies,
    }


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--fps", type=float, default=30.0, help="frames/s of the camera run")
    parser.add_argument("--model", default="faces", help="detection model to serve and stream to")
    args = parser.parse_args()

    settings = Settings(_env_file=None)
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    env = {"HOST": "127.0.0.1", "PORT": str(port), "SERVE_MODELS": args.model, "SERVE_CACHE_DIR": str(logdir / "cache")}
    server = Server("gunicorn", [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "serve_http:app"], env, port, logdir)
    frame = astronaut_jpeg()
    url = f"ws://127.0.0.1:{port}/v1/detect/stream"
    try:
        server.start()
        connect(url).close()  # first stream of the worker that answers: imports, thread start
        print(
            f"gunicorn {settings.worker_class}, {settings.workers} workers x {settings.threads} threads; "
            f"model {args.model}; 640x480 JPEG frames of {len(frame) / 1024:.0f} KB"
        )
        loop = closed_loop(url, frame, args.seconds)
        print(
            f"closed loop ({args.seconds:g} s): {loop['rate']:.1f} frames/s processed; "
            f"latency median {ms(loop['latencies'], 0.5)}, p90 {ms(loop['latencies'], 0.9)}; "
            f"model median {statistics.median(loop['model_ms']):.0f} ms"
        )
        cam = camera(url, frame, args.seconds, args.fps)
        print(
            f"camera at {args.fps:g} frames/s ({args.seconds:g} s): sent {cam['sent']}, processed {cam['processed']} "
            f"({cam['rate']:.1f}/s), dropped {cam['dropped']}; latency median {ms(cam['latencies'], 0.5)}, "
            f"p90 {ms(cam['latencies'], 0.9)}, max {ms(cam['latencies'], 1.0)}"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
