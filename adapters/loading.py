"""Finding a manifest's code: built-in adapters by name, ``package.module:Class``,
and ``model:Class`` from the model folder's own ``model.py``.

A folder's module is imported as ``serve_models.<name>_<hash of the folder's
path>.<module>``: unique, so two folders may both have a ``model.py``; a
package whose ``__path__`` is the folder, so ``model.py`` may import its
siblings relatively (``from . import helpers``) without anything being put on
``sys.path``. A file that does not import (syntax error, import error, an
exception at import) stops the load with one line naming the model and file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

from adapters.base import ModelAdapter, one_line
from serving.errors import ModelLoadError

#: The module of a ``module:Class`` spec that always means the model folder's own file.
FOLDER_MODULE = "model"
PACKAGE = "serve_models"

# Built-in adapters by short name; a manifest may also name "package.module:Class".
ADAPTERS = {
    "sklearn": "adapters.sklearn_model:SklearnModel",
    "xgboost": "adapters.xgboost_model:XGBoostModel",
    "lightgbm": "adapters.lightgbm_model:LightGBMModel",
    "transformers-pipeline": "adapters.hf_pipeline:TransformersPipeline",
    "transformers-detection": "adapters.transformers_detection:TransformersDetector",
    "haar-cascade": "adapters.haar_cascade:HaarCascadeDetector",
    "text-embedding": "adapters.text_embedding:TextEmbedder",
    "embedding-classifier": "adapters.embedding_classifier:EmbeddingClassifier",
    "efficientnet": "adapters.image_classification:EfficientNetClassifier",
    "forecast": "adapters.forecast:ForecastModel",
    "ensemble": "adapters.ensemble:Ensemble",
    "diffusers": "adapters.diffusers_pipeline:DiffusersPipeline",
}


def shown(path: Path) -> str:
    """A path as a message shows it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _folder_package(folder: Path, model: str) -> str:
    """The package standing for one model folder, created on first use."""
    if PACKAGE not in sys.modules:
        root = types.ModuleType(PACKAGE, "Code of the model folders, imported by serve-http.")
        root.__path__ = []
        sys.modules[PACKAGE] = root
    resolved = folder.resolve()
    tag = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"{PACKAGE}.{re.sub(r'[^0-9A-Za-z_]', '_', model)}_{tag}"
    if name not in sys.modules:
        package = types.ModuleType(name, f"Model folder {resolved}")
        package.__path__ = [str(resolved)]
        package.__file__ = str(resolved / "__init__.py")
        sys.modules[name] = package
    return name


def folder_module(folder: Path, module: str, model: str) -> types.ModuleType:
    """``<folder>/<module>.py`` imported once, under a name of its own."""
    path = folder / f"{module}.py"
    if not path.is_file():
        raise ModelLoadError(model, f"{shown(path)} not found")
    full = f"{_folder_package(folder, model)}.{module}"
    if full in sys.modules:  # the adapter and the task of one folder share the module
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[full] = loaded
    try:
        spec.loader.exec_module(loaded)
    except SyntaxError as exc:
        del sys.modules[full]
        raise ModelLoadError(model, f"{shown(path)}: SyntaxError: {exc.msg} (line {exc.lineno})") from None
    except Exception as exc:  # ImportError, NameError ... anything the file raises at import
        del sys.modules[full]
        raise ModelLoadError(model, f"{shown(path)}: {type(exc).__name__}: {one_line(exc)}") from exc
    return loaded


def load_object(spec: str, folder: Path, model: str, what: str) -> Any:
    """What ``module:Name`` names (the manifest's ``what``: adapter or task):
    from the model folder when the folder has ``<module>.py`` (``model`` must
    be there), else from an installed module."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelLoadError(model, f"{what} {spec!r} is not module:Name")
    local = module_name == FOLDER_MODULE or ("." not in module_name and (folder / f"{module_name}.py").is_file())
    if local:
        module = folder_module(folder, module_name, model)
        where = shown(folder / f"{module_name}.py")
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ModelLoadError(model, f"{what} {spec!r}: cannot import {module_name}: {one_line(exc)}") from exc
        where = module_name
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ModelLoadError(model, f"{where} has no {attr!r}") from None


def adapter_class(spec: str, folder: Path, model: str) -> type[ModelAdapter]:
    """The adapter class for a manifest's ``adapter``: a built-in name, ``module:Class``
    or ``model:Class`` (the folder's ``model.py``)."""
    target = ADAPTERS.get(spec, spec)
    if ":" not in target:
        raise ModelLoadError(model, f"unknown adapter {spec!r}; built-in: {', '.join(sorted(ADAPTERS))} (or module:Class)")
    cls = load_object(target, folder, model, "adapter")
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise ModelLoadError(model, f"adapter {spec!r} is not a ModelAdapter subclass")
    return cls
