"""The ``sklearn`` adapter: a pickled scikit-learn text classifier.

Serves any fitted estimator (typically a ``Pipeline`` of a vectoriser and a
classifier) that takes raw strings and has ``predict_proba`` and ``classes_``,
such as the ``model.joblib`` written by ``training/train_text_classifier.py``.
"""

from __future__ import annotations

from typing import Any, Sequence

import joblib
import numpy as np
import sklearn

from adapters.base import TEXT_CLASSIFICATION, Classification, ModelAdapter, one_line
from serving.errors import ModelLoadError


class SklearnTextClassifier(ModelAdapter):
    """A scikit-learn text classifier loaded with ``joblib.load`` from the manifest's ``source``.

    Security: joblib files are pickles, and unpickling runs arbitrary code. Only
    load a ``model.joblib`` you trained yourself or otherwise trust, never one
    uploaded by a user or downloaded from an unknown place. The file should also
    be loaded with the scikit-learn version that wrote it (``metrics.json``
    records it); other versions warn and may predict differently.

    ``source`` is a path relative to the model folder (``model.joblib``). If the
    manifest lists ``labels``, they must be the model's classes (in any order);
    ``self.labels`` is always the model's own order, that of ``predict_proba``.
    """

    task = TEXT_CLASSIFICATION

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None

    def load(self) -> None:
        """Unpickle the estimator and check that it can classify; raises ``ModelLoadError``."""
        model, labels = load_fitted_classifier(
            self, "the model file, e.g. model.joblib", "training/train_text_classifier.py"
        )
        if self.manifest.labels and set(self.manifest.labels) != set(labels):
            raise ModelLoadError(
                self.name, f"manifest labels {sorted(self.manifest.labels)} differ from the model's classes {sorted(labels)}"
            )
        self._model = model
        self.labels = labels

    def predict(self, batch: Sequence[str]) -> list[Classification]:
        """One ``Classification`` per text, in order, from a single ``predict_proba`` call."""
        if self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        texts = list(batch)
        if not texts:
            return []
        with sklearn.config_context(**TRUSTED_INPUT):
            probabilities = np.asarray(self._model.predict_proba(texts), dtype=float)
        best = probabilities.argmax(axis=1)
        labels = self.labels
        return [
            Classification(label=labels[i], scores={label: float(p) for label, p in zip(labels, row)})
            for i, row in zip(best.tolist(), probabilities.tolist())
        ]

    def unload(self) -> None:
        self._model = None
        super().unload()


# Inputs reach a fitted estimator from our own code, already checked (strings,
# or an encoder's finite vectors): scikit-learn's per-call checks of parameters
# and finiteness only cost time (measured: 1,966 -> 2,323 predict_proba calls/s
# for one text, 1,705 -> 1,959 for eight).
TRUSTED_INPUT = {"assume_finite": True, "skip_parameter_validation": True}


def load_fitted_classifier(adapter: ModelAdapter, what: str, trainer: str) -> tuple[Any, list[str]]:
    """Unpickle the manifest's ``source`` and check it is a fitted classifier with
    ``predict_proba`` and two or more distinct ``classes_``; the estimator and its
    labels in ``predict_proba`` order. ``what`` and ``trainer`` make the errors
    say what the file is and which script writes it. Raises ``ModelLoadError``."""
    source = adapter.manifest.source
    if not source:
        raise ModelLoadError(adapter.name, f"manifest has no source ({what})")
    path = adapter.resolve(source)
    if not path.is_file():
        raise ModelLoadError(adapter.name, f"{source} not found (train it: python {trainer} --out <folder>)")
    try:
        model = joblib.load(path)
    # Unpickling fails in many ways (truncated file, missing module, version
    # skew); every one of them means the same thing: this model cannot load.
    except Exception as exc:
        raise ModelLoadError(adapter.name, f"cannot load {source}: {type(exc).__name__}: {one_line(exc)}") from exc
    if not hasattr(model, "predict_proba"):
        raise ModelLoadError(adapter.name, f"{source} holds a {type(model).__name__} without predict_proba")
    try:
        classes = list(model.classes_)
    except AttributeError:  # also what an unfitted Pipeline raises
        raise ModelLoadError(
            adapter.name, f"{source} holds a {type(model).__name__} without classes_ (not fitted?)"
        ) from None
    labels = [str(c) for c in classes]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ModelLoadError(adapter.name, f"{source} has classes {labels}; need two or more distinct ones")
    return model, labels
