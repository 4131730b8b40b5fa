"""Print openapi.yml, generated from the code and the model repository.

The models of ``models/`` are loaded (weights are read, nothing runs), since
each one's operation shows its task's schemas: a tabular model's features
come from its fitted estimator. ``make models`` builds them first.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.spec import openapi_document  # noqa: E402
from predict import ModelRegistry  # noqa: E402
from serve_http import create_app  # noqa: E402
from serving.settings import Settings  # noqa: E402


class _Dumper(yaml.SafeDumper):
    """Quotes every string a YAML 1.2 reader could take for a number (09447000,
    1e5): PyYAML follows YAML 1.1, where a leading zero and a 9 make no number."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    looks_numeric = bool(re.fullmatch(r"[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?", value))
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'" if looks_numeric else None)


_Dumper.add_representer(str, _string)


def generate() -> str:
    settings = Settings(_env_file=None, cache_backend="none")
    registry = ModelRegistry(settings.model_repository)
    registry.load_all()
    app = create_app(settings, registry=registry)
    document = openapi_document(app)
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(generate())
