"""The fan-out peer: the seed's fusion endpoint at its best, as FastAPI and
aiohttp teach it. An ``async def`` route, one ``aiohttp.ClientSession`` per
worker (pooled keep-alive connections), ``asyncio.gather`` over the
upstreams, the mean of their scores; run by uvicorn with uvloop and
httptools (``bench/fan_out.py`` starts it).

``FANOUT_UPSTREAMS``: the upstreams' base URLs, comma-separated; each
speaks ``POST /v1/models/remote/predict``. ``BENCH_READY_DIR``: where each
worker drops a file once it is ready.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from fastapi import FastAPI

UPSTREAMS = [url for url in os.environ.get("FANOUT_UPSTREAMS", "").split(",") if url]
TIMEOUT = aiohttp.ClientTimeout(total=float(os.environ.get("FANOUT_TIMEOUT_S", "2")))
state: dict[str, aiohttp.ClientSession] = {}


@asynccontextmanager
async def lifespan(app: FastAPI):
    state["session"] = aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=100))
    if os.environ.get("BENCH_READY_DIR"):
        (Path(os.environ["BENCH_READY_DIR"]) / str(os.getpid())).touch()
    yield
    await state["session"].close()


app = FastAPI(lifespan=lifespan)


async def call(url: str, body: dict) -> dict:
    async with state["session"].post(f"{url}/v1/models/remote/predict", json=body) as response:
        response.raise_for_status()
        return await response.json()


@app.post("/fusion")
async def fusion(body: dict) -> dict:
    answers = await asyncio.gather(*(call(url, {"inputs": body["inputs"]}) for url in UPSTREAMS))
    results = []
    for i in range(len(body["inputs"])):
        outputs = [answer["outputs"][i] for answer in answers]
        labels = sorted({label for o in outputs for label in o["scores"]})
        scores = {label: sum(o["scores"].get(label, 0.0) for o in outputs) / len(outputs) for label in labels}
        results.append({"category": max(labels, key=scores.__getitem__), "scores": scores})
    return {"result": results}
