"""What a request handler needs from the app, in one object."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from predict import ModelRegistry, Predictor
from serving.settings import Settings

EXTENSION = "serve_http"


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    predictor: Predictor


def services() -> Services:
    return current_app.extensions[EXTENSION]
