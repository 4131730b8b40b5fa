"""The ``xgboost`` adapter: a model saved in XGBoost's own format (``.json`` or ``.ubj``).

Manifest::

    task: tabular-classification        # or tabular-regression
    adapter: xgboost
    source: model.json                  # Booster.save_model / XGBClassifier.save_model
    labels: [no, yes]                   # names of classes 0, 1, ... (default: "0", "1", ...)

The booster's feature names and types are the features (a model trained on
a pandas DataFrame has them; else list them in the manifest). A categorical
feature (``enable_categorical``) takes the strings it was trained on: the
categories saved in the model are the only ones accepted. Missing values
(null) are XGBoost's own missing value, for every feature.

The objective says what the model answers: ``multi:softprob`` and
``binary:logistic`` give scores, ``multi:softmax`` the class alone, ``reg:*``
(and the other objectives) values. Prediction uses the worker's compute
threads (``serving.threads``), set after fork.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from adapters.base import ModelAdapter, one_line
from adapters.tabular import (
    binary_probabilities,
    booster_labels,
    class_results,
    data_frame,
    regression_results,
    resolve_features,
    saved_model,
)
from serving.errors import ModelLoadError
from serving.threads import compute_threads
from tasks import TABULAR_CLASSIFICATION, TABULAR_REGRESSION
from tasks.results import Classification
from tasks.tabular import NUMBER, STRING, Feature

_PROBABILITIES = {"multi:softprob", "binary:logistic"}
_CLASS_INDEX = {"multi:softmax"}
_CLASSIFICATION = _PROBABILITIES | _CLASS_INDEX | {"binary:logitraw", "binary:hinge"}


def saved_categories(booster: Any) -> dict[int, tuple[str, ...]]:
    """The string categories saved with a categorical model, by feature index.

    XGBoost 3 keeps them in the model (``learner.gradient_booster.model.cats``:
    per feature, UTF-8 bytes and offsets); reading them needs no pyarrow. A
    model without them (numeric categories, older formats) gives none.
    """
    try:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]
        cats = model["cats"]
    except (KeyError, TypeError, ValueError):
        return {}
    segments = cats.get("feature_segments") or []
    found: dict[int, tuple[str, ...]] = {}
    for index, entry in enumerate(cats.get("enc") or []):
        offsets, values = entry.get("offsets") or [], entry.get("values") or []
        if len(offsets) < 2 or index + 1 >= len(segments) or segments[index + 1] == segments[index]:
            continue
        data = bytes(values)
        found[index] = tuple(data[a:b].decode("utf-8") for a, b in zip(offsets, offsets[1:]))
    return found


class XGBoostModel(ModelAdapter):
    """An XGBoost ``Booster`` read from its saved model file."""

    tasks = (TABULAR_CLASSIFICATION, TABULAR_REGRESSION)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: Any = None
        self.features: list[Feature] = []
        self.objective = ""
        self._threads = 0

    def load(self) -> None:
        """Read the booster, its objective and features; raises ``ModelLoadError``."""
        import xgboost

        path = saved_model(self, "model.json")
        try:
            booster = xgboost.Booster()
            booster.load_model(str(path))
            config = json.loads(booster.save_config())["learner"]
        except Exception as exc:  # XGBoostError, JSON errors: not a model file
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source}: {one_line(exc)}") from exc
        objective = config["objective"]["name"]
        classes = int(config["learner_model_param"].get("num_class", "0")) or 2
        labels = booster_labels(self, objective, objective in _CLASSIFICATION, classes)
        found = None
        if booster.feature_names:
            categories = saved_categories(booster)
            types = booster.feature_types or ["float"] * len(booster.feature_names)
            found = [
                Feature(name, STRING, True, categories.get(i)) if kind == "c" else Feature(name, NUMBER, True)
                for i, (name, kind) in enumerate(zip(booster.feature_names, types))
            ]
        self.features = resolve_features(self, found, booster.num_features())
        self._booster, self.objective, self.labels = booster, objective, labels

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if self._booster is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        rows = list(batch)
        if not rows:
            return []
        threads = compute_threads()
        if threads != self._threads:  # after fork: the worker's own count
            self._booster.set_param({"nthread": threads})
            self._threads = threads
        frame = data_frame(rows, self.features, categorical=True)
        output = self._booster.inplace_predict(frame, validate_features=False)
        if self.manifest.task == TABULAR_REGRESSION:
            return regression_results(output, len(rows))
        if self.objective in _CLASS_INDEX:
            return [Classification(label=self.labels[int(i)]) for i in np.asarray(output).reshape(-1).tolist()]
        if self.objective in _PROBABILITIES:
            output = np.asarray(output)
            return class_results(output if output.ndim == 2 else binary_probabilities(output), self.labels)
        # Margins and hinge outputs: the sign says the class, there is no probability.
        return [Classification(label=self.labels[int(v > 0)]) for v in np.asarray(output).reshape(-1).tolist()]

    def unload(self) -> None:
        self._booster = None
        super().unload()
