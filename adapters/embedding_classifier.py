"""The ``embedding-classifier`` adapter: a scikit-learn head over a shared text encoder.

Manifest::

    task: text-classification
    adapter: embedding-classifier
    depends_on: [minilm]      # a loaded text-embedding model, shared, not copied
    source: head.joblib       # e.g. a LogisticRegression, written by training/train_embedding_classifier.py
    options:
      encoder: minilm         # which dependency encodes (default: the only one)
      max_length: 256         # truncation the head was trained with (default: the encoder's)

The registry loads the encoder first and sets ``adapter.dependencies`` before
``load()``; this adapter never loads weights of its own besides the head.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import sklearn

from adapters.base import ModelAdapter
from adapters.sklearn_model import TRUSTED_INPUT, load_fitted_classifier
from tasks import TEXT_CLASSIFICATION
from tasks.results import Classification
from adapters.text_embedding import TextEmbedder
from serving.errors import ModelLoadError


class EmbeddingClassifier(ModelAdapter):
    """A classifier with ``predict_proba`` over the vectors of a ``TextEmbedder``.

    Security: ``head.joblib`` is a pickle; load only one you trained or trust.
    ``self.labels`` is the head's ``classes_`` order, that of ``predict_proba``.
    """

    task = TEXT_CLASSIFICATION

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: Any = None
        self._encoder: TextEmbedder | None = None
        self._max_length: int | None = None

    def load(self) -> None:
        """Pick the loaded encoder among the dependencies and unpickle the head; raises ``ModelLoadError``."""
        encoder = self._find_encoder()
        max_length = self.options.get("max_length")
        if max_length is not None and (not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1):
            raise ModelLoadError(self.name, f"option max_length must be a positive integer, not {max_length!r}")
        head, labels = load_fitted_classifier(
            self, "the head, e.g. head.joblib", "training/train_embedding_classifier.py"
        )
        # A head fitted on another encoder's vectors would predict garbage, silently.
        expected = getattr(head, "n_features_in_", encoder.dim)
        if expected != encoder.dim:
            raise ModelLoadError(
                self.name, f"{self.manifest.source} expects {expected} features; encoder {encoder.name!r} gives {encoder.dim}"
            )
        if self.manifest.labels and set(self.manifest.labels) != set(labels):
            raise ModelLoadError(
                self.name, f"manifest labels {sorted(self.manifest.labels)} differ from the head's classes {sorted(labels)}"
            )
        self._head, self._encoder, self._max_length = head, encoder, max_length
        self.labels = labels

    def _find_encoder(self) -> TextEmbedder:
        names = list(self.manifest.depends_on)
        name = self.options.get("encoder") or (names[0] if len(names) == 1 else None)
        if name is None:
            raise ModelLoadError(
                self.name, f"needs one text-embedding model in depends_on (or option encoder), has {names or 'none'}"
            )
        encoder = self.dependencies.get(name)
        if encoder is None:
            raise ModelLoadError(self.name, f"encoder {name!r} is not loaded (list it in depends_on)")
        if not isinstance(encoder, TextEmbedder):
            raise ModelLoadError(
                self.name, f"encoder {name!r} is a {type(encoder).__name__}, not a text-embedding model"
            )
        if not encoder.loaded:
            raise ModelLoadError(self.name, f"encoder {name!r} is not loaded")
        return encoder

    def predict(self, batch: Sequence[str]) -> list[Classification]:
        """One ``Classification`` per text: one encoder pass and one ``predict_proba`` for the batch."""
        if self._head is None or self._encoder is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        texts = list(batch)
        if not texts:
            return []
        vectors = self._encoder.encode(texts, max_length=self._max_length)
        with sklearn.config_context(**TRUSTED_INPUT):
            probabilities = np.asarray(self._head.predict_proba(vectors), dtype=float)
        labels = self.labels
        return [
            Classification(label=labels[i], scores={label: float(p) for label, p in zip(labels, row)})
            for i, row in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())
        ]

    def unload(self) -> None:
        # The encoder belongs to the registry; only our reference goes.
        self._head = self._encoder = None
        super().unload()

