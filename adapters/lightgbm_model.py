"""The ``lightgbm`` adapter: a model saved in LightGBM's own text format.

Manifest::

    task: tabular-classification        # or tabular-regression
    adapter: lightgbm
    source: model.txt                   # Booster.save_model / LGBMClassifier.booster_.save_model
    labels: [no, yes]                   # names of classes 0, 1, ... (default: "0", "1", ...)

The booster's feature names are the features: LightGBM's own, which have
underscores for the spaces of the DataFrame's columns (``Column_0``... when
it was trained on a matrix: list real names in the manifest). A categorical feature
of a model trained on a pandas DataFrame takes the strings saved with the
model (``pandas_categorical``), and only those; missing values (null) are
LightGBM's own missing value. ``multiclass``, ``binary`` and the other
classification objectives give scores; the rest give values.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from adapters.base import ModelAdapter, one_line
from adapters.tabular import (
    binary_probabilities,
    booster_labels,
    class_results,
    data_frame,
    numeric_matrix,
    regression_results,
    resolve_features,
    saved_model,
)
from serving.errors import ModelLoadError
from serving.threads import compute_threads
from tasks import TABULAR_CLASSIFICATION, TABULAR_REGRESSION
from tasks.tabular import NUMBER, STRING, Feature

_MULTICLASS = {"multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr"}
_BINARY = {"binary", "cross_entropy", "xentropy"}


class LightGBMModel(ModelAdapter):
    """A LightGBM ``Booster`` read from its model file."""

    tasks = (TABULAR_CLASSIFICATION, TABULAR_REGRESSION)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._booster: Any = None
        self.features: list[Feature] = []
        self.objective = ""

    def load(self) -> None:
        """Read the booster, its objective and features; raises ``ModelLoadError``."""
        import lightgbm

        path = saved_model(self, "model.txt")
        try:
            booster = lightgbm.Booster(model_file=str(path))
            objective = str(booster.params.get("objective", "regression")).split()[0]
        except Exception as exc:  # LightGBMError: not a model file
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source}: {one_line(exc)}") from exc
        classifying = objective in _MULTICLASS | _BINARY
        classes = int(booster.params.get("num_class", 1)) if objective in _MULTICLASS else 2
        labels = booster_labels(self, objective, classifying, classes)
        names = booster.feature_name()
        categorical = list(booster.params.get("categorical_feature") or [])
        saved = booster.pandas_categorical or []
        categories = {index: tuple(str(c) for c in cats) for index, cats in zip(categorical, saved)}
        found = [
            Feature(name, STRING, True, categories[i]) if i in categories else Feature(name, NUMBER, True)
            for i, name in enumerate(names)
        ]
        # Column_0, Column_1 ...: a model trained on a matrix names nothing.
        generic = all(name == f"Column_{i}" for i, name in enumerate(names))
        self.features = resolve_features(self, None if generic else found, len(names))
        if generic and categories:
            raise ModelLoadError(self.name, "a model with categorical features needs its named columns")
        self._booster, self.objective, self.labels = booster, objective, labels

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if self._booster is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        rows = list(batch)
        if not rows:
            return []
        if any(f.kind == STRING for f in self.features):
            data: Any = data_frame(rows, self.features, categorical=True)
        else:
            data = numeric_matrix(rows, self.features)
        output = self._booster.predict(data, num_threads=compute_threads(), validate_features=False)
        if self.manifest.task == TABULAR_REGRESSION:
            return regression_results(output, len(rows))
        output = np.asarray(output)
        return class_results(output if output.ndim == 2 else binary_probabilities(output), self.labels)

    def unload(self) -> None:
        self._booster = None
        super().unload()
