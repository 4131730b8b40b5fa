"""What the tabular adapters share: a model's features, and its input rows.

Features come from the fitted model (scikit-learn's ``feature_names_in_`` and
encoders, XGBoost's and LightGBM's own feature names and types) or from the
manifest's ``features``, which win where both exist (they may refine a type,
nullability or categories, never rename or reorder the model's columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapters.base import ModelAdapter
from serving.errors import ModelLoadError
from tasks import TABULAR_CLASSIFICATION
from tasks.results import Classification, Regression
from tasks.tabular import NUMBER, STRING, Feature


def manifest_features(adapter: ModelAdapter) -> list[Feature] | None:
    """The manifest's ``features``, or None when it lists none."""
    specs = adapter.manifest.features
    if specs is None:
        return None
    features = []
    for spec in specs:
        if isinstance(spec, str):
            features.append(Feature(spec))
        else:
            categories = tuple(spec.categories) if spec.categories else None
            features.append(Feature(spec.name, spec.type, spec.nullable, categories))
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ModelLoadError(adapter.name, "the manifest's features name a column twice")
    return features


def resolve_features(adapter: ModelAdapter, found: list[Feature] | None, count: int | None) -> list[Feature]:
    """The model's features: the manifest's where given (checked against the
    model's own names or column count), else what the model says."""
    declared = manifest_features(adapter)
    if declared is None:
        if found is None:
            raise ModelLoadError(
                adapter.name,
                "the model does not name its features (fitted without column names): "
                "list them in the manifest (features: [name, ...])",
            )
        return found
    if found is not None and [f.name for f in found] != [f.name for f in declared]:
        raise ModelLoadError(
            adapter.name,
            f"the manifest's features {[f.name for f in declared]} are not the model's {[f.name for f in found]}",
        )
    if count is not None and count != len(declared):
        raise ModelLoadError(adapter.name, f"the manifest lists {len(declared)} features; the model takes {count}")
    return declared


def saved_model(adapter: ModelAdapter, example: str) -> Path:
    """The manifest's ``source``, a file of the model folder; raises ``ModelLoadError``."""
    source = adapter.manifest.source
    if not source:
        raise ModelLoadError(adapter.name, f"manifest has no source (the saved model, e.g. {example})")
    path = adapter.resolve(source)
    if not path.is_file():
        raise ModelLoadError(adapter.name, f"{source} not found")
    return path


def booster_labels(adapter: ModelAdapter, objective: str, classifying: bool, classes: int) -> list[str]:
    """A gradient-boosting model's labels for its task: the manifest's names of
    classes 0, 1, ... or the indices; raises ``ModelLoadError`` when the
    objective does not do the manifest's task."""
    task = adapter.manifest.task
    if classifying != (task == TABULAR_CLASSIFICATION):
        raise ModelLoadError(adapter.name, f"{adapter.manifest.source} has objective {objective}, which does not do {task}")
    if not classifying:
        return []
    if adapter.manifest.labels:
        if len(adapter.manifest.labels) != classes:
            raise ModelLoadError(
                adapter.name, f"manifest has {len(adapter.manifest.labels)} labels; the model has {classes} classes"
            )
        return list(adapter.manifest.labels)
    return [str(c) for c in range(classes)]


def numeric_matrix(rows: Sequence[tuple], features: list[Feature]) -> np.ndarray:
    """Rows of numeric features as a float64 matrix; a missing value is NaN."""
    if any(f.kind != NUMBER for f in features):
        raise TypeError("numeric_matrix needs numeric features only")
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64).reshape(
        len(rows), len(features)
    )


def data_frame(rows: Sequence[tuple], features: list[Feature], categorical: bool = False) -> Any:
    """Rows as a pandas DataFrame with the model's column names: numbers as
    float64 (NaN when missing), strings as objects (None when missing) or, with
    ``categorical``, as pandas categories of the known values."""
    import pandas as pd

    columns: dict[str, Any] = {}
    for j, feature in enumerate(features):
        values = [row[j] for row in rows]
        if feature.kind == STRING:
            if categorical:
                columns[feature.name] = pd.Categorical(values, categories=list(feature.categories or ()) or None)
            else:
                columns[feature.name] = np.array(values, dtype=object)
        else:
            columns[feature.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.DataFrame(columns, copy=False)


def class_results(probabilities: np.ndarray, labels: list[str]) -> list[Classification]:
    """One ``Classification`` per row of a probability matrix whose columns are ``labels``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    best = probabilities.argmax(axis=1)
    return [
        Classification(label=labels[i], scores={label: float(p) for label, p in zip(labels, row)})
        for i, row in zip(best.tolist(), probabilities.tolist())
    ]


def binary_probabilities(positive: np.ndarray) -> np.ndarray:
    """P(class 1) per row as the two-column matrix (P(class 0), P(class 1))."""
    positive = np.asarray(positive, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - positive, positive])


def regression_results(predictions: Any, rows: int) -> list[Regression]:
    """One ``Regression`` per row: a value, or values for a multi-output model."""
    values = np.asarray(predictions, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] > 1:
        return [Regression(values=tuple(row)) for row in values.tolist()]
    return [Regression(value=v) for v in values.reshape(rows).tolist()]
