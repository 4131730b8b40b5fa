"""The ``sklearn`` adapter: a pickled scikit-learn estimator or pipeline.

- ``text-classification``: an estimator that takes raw strings (typically a
  ``Pipeline`` of a vectoriser and a classifier) with ``predict_proba`` and
  ``classes_``, such as the ``model.joblib`` of ``training/train_text_classifier.py``.
- ``tabular-classification``: any fitted classifier; ``scores`` come from
  ``predict_proba`` where it has one, else the answer is the label alone.
- ``tabular-regression``: any fitted regressor (one target or several).

For the tabular tasks the features are the estimator's own: ``feature_names_in_``
(a model fitted on a pandas DataFrame) gives the names; a string column is
one that an ``OneHotEncoder`` / ``OrdinalEncoder`` reads with string
categories (inside a ``ColumnTransformer`` or a ``Pipeline``), and those
categories are the only values accepted when the encoder refuses unknown
ones; a value may be null where the step that reads it takes NaN (an imputer,
a histogram gradient boosting model). A model fitted on a numpy array names
no features: the manifest lists them (``features``). Rows reach the
estimator as a DataFrame with its column names, so a fitted pipeline gets
what it was fitted on.
"""

from __future__ import annotations

from typing import Any, Sequence

import joblib
import numpy as np
import sklearn
from sklearn.base import is_classifier
from sklearn.utils import get_tags

from adapters.base import ModelAdapter, one_line
from adapters.tabular import class_results, data_frame, numeric_matrix, regression_results, resolve_features
from serving.errors import ModelLoadError
from tasks import TABULAR_CLASSIFICATION, TABULAR_REGRESSION, TEXT_CLASSIFICATION
from tasks.results import Classification
from tasks.tabular import NUMBER, STRING, Feature

# Inputs reach a fitted estimator from our own code, already checked (strings,
# an encoder's finite vectors, validated records): scikit-learn's per-call
# checks of parameters and finiteness only cost time (measured: 1,966 -> 2,323
# predict_proba calls/s for one text, 1,705 -> 1,959 for eight).
TRUSTED_INPUT = {"assume_finite": True, "skip_parameter_validation": True}


class SklearnModel(ModelAdapter):
    """A scikit-learn estimator loaded with ``joblib.load`` from the manifest's ``source``.

    Security: joblib files are pickles, and unpickling runs arbitrary code. Only
    load a ``model.joblib`` you trained yourself or otherwise trust, never one
    uploaded by a user or downloaded from an unknown place. The file should also
    be loaded with the scikit-learn version that wrote it (``metrics.json``
    records it); other versions warn and may predict differently.

    ``source`` is a path relative to the model folder (``model.joblib``). If the
    manifest lists ``labels``, they must be the model's classes (in any order);
    ``self.labels`` is always the model's own order, that of ``predict_proba``.
    """

    tasks = (TEXT_CLASSIFICATION, TABULAR_CLASSIFICATION, TABULAR_REGRESSION)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None
        self.features: list[Feature] = []
        self._proba = False
        self._named = False

    def load(self) -> None:
        """Unpickle the estimator and check that it can serve the task; raises ``ModelLoadError``."""
        task = self.manifest.task
        if task == TEXT_CLASSIFICATION:
            model, labels = load_fitted_classifier(
                self, "the model file, e.g. model.joblib", "training/train_text_classifier.py"
            )
        else:
            model = load_estimator(self, "the model file, e.g. model.joblib")
            if task == TABULAR_CLASSIFICATION:
                labels = classifier_labels(self, model)
            else:
                if is_classifier(model) or not hasattr(model, "predict"):
                    raise ModelLoadError(self.name, f"{self.manifest.source} holds a {type(model).__name__}, not a regressor")
                labels = []
            names = getattr(model, "feature_names_in_", None)
            self._named = names is not None
            found = estimator_features(model, [str(n) for n in names]) if self._named else None
            self.features = resolve_features(self, found, getattr(model, "n_features_in_", None))
        if labels and self.manifest.labels and set(self.manifest.labels) != set(labels):
            raise ModelLoadError(
                self.name, f"manifest labels {sorted(self.manifest.labels)} differ from the model's classes {sorted(labels)}"
            )
        self._model = model
        self._proba = hasattr(model, "predict_proba")
        self.labels = labels

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        """One result per input, in order, from a single call of the estimator."""
        if self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        items = list(batch)
        if not items:
            return []
        if self.manifest.task == TEXT_CLASSIFICATION:
            with sklearn.config_context(**TRUSTED_INPUT):
                return class_results(self._model.predict_proba(items), self.labels)
        rows = self._rows(items)
        with sklearn.config_context(**TRUSTED_INPUT):
            if self.manifest.task == TABULAR_REGRESSION:
                return regression_results(self._model.predict(rows), len(items))
            if self._proba:
                return class_results(self._model.predict_proba(rows), self.labels)
            return [Classification(label=str(label)) for label in np.asarray(self._model.predict(rows)).tolist()]

    def _rows(self, items: list[tuple]) -> Any:
        """Records as the estimator was fitted: a named DataFrame, or a matrix."""
        if self._named or any(f.kind != NUMBER for f in self.features):
            return data_frame(items, self.features)
        return numeric_matrix(items, self.features)

    def unload(self) -> None:
        self._model = None
        super().unload()


# --- loading -----------------------------------------------------------------


def load_estimator(adapter: ModelAdapter, what: str, trainer: str | None = None) -> Any:
    """Unpickle the manifest's ``source``; raises ``ModelLoadError`` with one line
    saying what the file is (``what``) and which script writes it (``trainer``)."""
    source = adapter.manifest.source
    if not source:
        raise ModelLoadError(adapter.name, f"manifest has no source ({what})")
    path = adapter.resolve(source)
    if not path.is_file():
        hint = f" (train it: python {trainer} --out <folder>)" if trainer else ""
        raise ModelLoadError(adapter.name, f"{source} not found{hint}")
    try:
        return joblib.load(path)
    # Unpickling fails in many ways (truncated file, missing module, version
    # skew); every one of them means the same thing: this model cannot load.
    except Exception as exc:
        raise ModelLoadError(adapter.name, f"cannot load {source}: {type(exc).__name__}: {one_line(exc)}") from exc


def classifier_labels(adapter: ModelAdapter, model: Any) -> list[str]:
    """A fitted classifier's labels (``classes_`` as strings, two or more distinct ones)."""
    source = adapter.manifest.source
    try:
        classes = list(model.classes_)
    except AttributeError:  # also what an unfitted Pipeline raises
        raise ModelLoadError(
            adapter.name, f"{source} holds a {type(model).__name__} without classes_ (not fitted, or not a classifier?)"
        ) from None
    labels = [str(c) for c in classes]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelLoadError(adapter.name, f"{source} has classes {labels}; need two or more distinct ones")
    return labels


def load_fitted_classifier(adapter: ModelAdapter, what: str, trainer: str) -> tuple[Any, list[str]]:
    """Unpickle the manifest's ``source`` and check it is a fitted classifier with
    ``predict_proba`` and two or more distinct ``classes_``; the estimator and its
    labels in ``predict_proba`` order. Raises ``ModelLoadError``."""
    model = load_estimator(adapter, what, trainer)
    if not hasattr(model, "predict_proba"):
        raise ModelLoadError(adapter.name, f"{adapter.manifest.source} holds a {type(model).__name__} without predict_proba")
    return model, classifier_labels(adapter, model)


# --- features of a fitted estimator ------------------------------------------


_REMOVES, _PASSES, _FAILS = "removes", "passes", "fails"


def _steps(estimator: Any) -> list[Any]:
    """A pipeline's steps, nested pipelines flattened and pass-through steps
    left out; any other estimator alone."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    if estimator in (None, "passthrough") or (isinstance(estimator, FunctionTransformer) and estimator.func is None):
        return []  # a fitted ColumnTransformer's "passthrough" remainder is an identity FunctionTransformer
    if not isinstance(estimator, Pipeline):
        return [estimator]
    return [inner for _, step in estimator.steps for inner in _steps(step)]


def _nan_fate(steps: list[Any]) -> str:
    """What becomes of a NaN that enters these steps: an imputer removes it, a
    step that refuses NaN fails on it, and one that takes it (a scaler, a
    histogram gradient boosting model) passes it on or handles it."""
    for step in steps:
        if type(step).__module__.startswith("sklearn.impute"):
            return _REMOVES
        try:
            takes = bool(get_tags(step).input_tags.allow_nan)
        except Exception:  # a third-party estimator without tags
            takes = False
        if not takes:
            return _FAILS
    return _PASSES


def _encoder(steps: list[Any]) -> tuple[Any, bool]:
    """The category encoder that reads the input first (through imputers), and
    whether an imputer fills missing values before it."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    imputed = False
    for step in steps:
        if isinstance(step, (OneHotEncoder, OrdinalEncoder)):
            return step, imputed
        if not type(step).__module__.startswith("sklearn.impute"):
            return None, False
        imputed = True
    return None, False


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _column_features(steps: list[Any], columns: list[str], downstream: list[Any]) -> dict[str, Feature]:
    """The features of ``columns`` entering ``steps`` (then ``downstream``)."""
    from sklearn.compose import ColumnTransformer

    first = steps[0] if steps else None
    if isinstance(first, ColumnTransformer) and hasattr(first, "_transformer_to_input_indices"):
        rest = steps[1:] + downstream
        found: dict[str, Feature] = {}
        for name, indices in first._transformer_to_input_indices.items():
            transformer = first.named_transformers_.get(name, "drop")
            cols = [columns[i] for i in indices]
            if transformer == "drop":  # never read: any number, or nothing
                found.update({c: Feature(c, NUMBER, nullable=True) for c in cols})
            else:
                found.update(_column_features(_steps(transformer), cols, rest))
        return found
    encoder, imputed = _encoder(steps)
    if encoder is None:
        nullable = _nan_fate(steps + downstream) != _FAILS
        return {c: Feature(c, NUMBER, nullable=nullable) for c in columns}
    strict = getattr(encoder, "handle_unknown", "error") == "error"
    found = {}
    for column, categories in zip(columns, encoder.categories_):
        known = [c for c in categories if not _missing(c)]
        nullable = imputed or not strict or len(known) < len(categories)
        if categories.dtype != object:  # numeric codes: still a number on the wire
            found[column] = Feature(column, NUMBER, nullable=nullable)
        else:
            found[column] = Feature(column, STRING, nullable, tuple(str(c) for c in known) if strict else None)
    return found


def estimator_features(estimator: Any, names: list[str]) -> list[Feature]:
    """The features of an estimator fitted on named columns, in its column order."""
    found = _column_features(_steps(estimator), names, [])
    return [found.get(name, Feature(name)) for name in names]
