"""Print openapi.yml, generated from the code and the model repository.

The models of ``models/`` are loaded (weights are read, nothing runs), since
each one's operation shows its task's schemas: a tabular model's features
come from its fitted estimator. ``make models`` builds them first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.spec import openapi_document  # noqa: E402
from predict import ModelRegistry  # noqa: E402
from serve_http import create_app  # noqa: E402
from serving.settings import Settings  # noqa: E402


def generate() -> str:
    settings = Settings(_env_file=None, cache_backend="none")
    registry = ModelRegistry(settings.model_repository)
    registry.load_all()
    app = create_app(settings, registry=registry)
    document = openapi_document(app)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(generate())
