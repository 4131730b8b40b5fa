"""Swagger UI and Redoc, served with their assets from our own process.

The JavaScript and CSS come from the drf-spectacular-sidecar wheel (the
upstream swagger-ui-dist and redoc bundles, repackaged; installed without its
Django dependency, and never imported), so the docs work on a machine with no
internet.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, redirect, send_from_directory

from api.spec import API_TITLE, openapi_document

docs = Blueprint("docs", __name__)

PREFIX = "/apidoc"


def assets_dir() -> Path:
    found = importlib.util.find_spec("drf_spectacular_sidecar")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("drf-spectacular-sidecar is not installed (see requirements-nodeps.txt)")
    return Path(found.submodule_search_locations[0]) / "static" / "drf_spectacular_sidecar"


SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - Swagger UI</title>
  <link rel="stylesheet" href="{prefix}/assets/swagger-ui-dist/swagger-ui.css">
  <link rel="icon" href="{prefix}/assets/swagger-ui-dist/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{prefix}/assets/swagger-ui-dist/swagger-ui-bundle.js"></script>
  <script src="{prefix}/assets/swagger-ui-dist/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{prefix}/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
      validatorUrl: null
    }});
  </script>
</body>
</html>
"""

REDOC_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title} - Redoc</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
  <redoc spec-url="{prefix}/openapi.json"></redoc>
  <script src="{prefix}/assets/redoc/bundles/redoc.standalone.js"></script>
</body>
</html>
"""


@docs.get("/docs")
def index():
    return redirect(f"{PREFIX}/swagger")


@docs.get(f"{PREFIX}/swagger")
def swagger():
    return SWAGGER_PAGE.format(title=API_TITLE, prefix=PREFIX)


@docs.get(f"{PREFIX}/redoc")
def redoc():
    return REDOC_PAGE.format(title=API_TITLE, prefix=PREFIX)


@docs.get(f"{PREFIX}/openapi.json")
def openapi_json():
    return jsonify(openapi_document(current_app))


REDOC_BUNDLE = "redoc/bundles/redoc.standalone.js"
# Redoc's sidebar always shows a logo fetched from its CDN; offline it only
# fails, but a docs page must not reach out at all: it gets an empty image.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"


@lru_cache(maxsize=1)
def redoc_bundle() -> bytes:
    return (assets_dir() / REDOC_BUNDLE).read_bytes().replace(REDOC_LOGO.encode(), EMPTY_SVG.encode())


@docs.get(f"{PREFIX}/assets/<path:filename>")
def asset(filename: str):
    if filename == REDOC_BUNDLE:
        response = Response(redoc_bundle(), mimetype="text/javascript")
        response.cache_control.max_age = 86400
        return response
    return send_from_directory(assets_dir(), filename, max_age=86400)
