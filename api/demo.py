"""``/demo``: a browser page that streams a camera to ``/v1/detect/stream``.

Plain HTML, CSS and JavaScript from ``api/demo/``, served by this process: no
CDN, no build step. The page itself is public; the stream it opens is not (the
page has a field for the API key).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

ASSETS = Path(__file__).resolve().parent / "demo"

demo = Blueprint("demo", __name__)


@demo.get("/demo")
def page():
    """The live detection page."""
    return send_from_directory(ASSETS, "index.html", max_age=0)


@demo.get("/demo/<path:name>")
def asset(name: str):
    """The page's script and style sheet (``send_from_directory`` refuses paths outside the folder)."""
    return send_from_directory(ASSETS, name, max_age=0)
