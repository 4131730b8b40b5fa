"""The ``transformers-pipeline`` adapter: a local Hugging Face checkpoint.

Manifest::

    task: token-classification      # or text-classification, question-answering
    adapter: transformers-pipeline
    source: checkpoint              # a folder with config.json, the weights and the tokenizer files
    options:
      aggregation_strategy: simple  # token-classification: none, simple, first, average or max
      max_length: 384               # tokens per input (text-classification truncates;
                                    # question-answering splits a long context into windows)
      doc_stride: 128               # question-answering: tokens two windows share
      max_answer_length: 30         # question-answering: longest answer, in tokens

``text-classification`` and ``token-classification`` run through
``transformers.pipeline``, batched. transformers 5 removed the
``question-answering`` pipeline, so that task runs the checkpoint's
``AutoModelForQuestionAnswering`` here with the pipeline's former method: the
context is split into overlapping windows, question and padding tokens are
masked, and the answer is the span (end after start, at most
``max_answer_length`` tokens) with the highest product of start and end
probabilities over all windows.

``source`` is a folder (relative to the model folder, or absolute), or a hub
id already in the local Hugging Face cache; nothing is downloaded at start-up.
``load`` reads weights only (no forward pass): it runs in the Gunicorn master.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adapters.base import ModelAdapter, one_line
from serving.errors import ModelLoadError
from tasks import QUESTION_ANSWERING, TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION
from tasks.results import Answer, Classification, Entity
from tasks.text import Question

AGGREGATIONS = ("none", "simple", "first", "average", "max")


def _positive_int(adapter: ModelAdapter, key: str, default: int) -> int:
    value = adapter.options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelLoadError(adapter.name, f"option {key} must be a positive integer, not {value!r}")
    return value


class TransformersPipeline(ModelAdapter):
    """A transformers checkpoint for text classification, token classification
    or extractive question answering."""

    tasks = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipeline: Any = None
        self._model: Any = None
        self._tokenizer: Any = None
        # Fast tokenizers refuse concurrent use ("Already borrowed"): with
        # SERVE_BATCHING=false request threads call predict side by side.
        self._lock = threading.Lock()

    def _checkpoint(self) -> str:
        source = self.manifest.source
        if not source:
            raise ModelLoadError(self.name, "no source: name a checkpoint folder")
        local = self.resolve(source)
        if local.is_dir():
            return str(local)
        if "/" in source and not Path(source).is_absolute():
            return source  # a hub id, from the local cache only
        raise ModelLoadError(self.name, f"checkpoint folder {source!r} not found")

    def load(self) -> None:
        """Read the tokenizer and weights; raises ``ModelLoadError``."""
        from transformers import (
            AutoModelForQuestionAnswering,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
            pipeline,
        )

        heads = {
            QUESTION_ANSWERING: AutoModelForQuestionAnswering,
            TEXT_CLASSIFICATION: AutoModelForSequenceClassification,
            TOKEN_CLASSIFICATION: AutoModelForTokenClassification,
        }

        task = self.manifest.task
        self.max_length = _positive_int(self, "max_length", 384 if task == QUESTION_ANSWERING else 512)
        self.doc_stride = _positive_int(self, "doc_stride", 128)
        self.max_answer_length = _positive_int(self, "max_answer_length", 30)
        aggregation = self.options.get("aggregation_strategy", "simple")
        if aggregation not in AGGREGATIONS:
            raise ModelLoadError(self.name, f"option aggregation_strategy must be one of {', '.join(AGGREGATIONS)}")
        if task == QUESTION_ANSWERING and self.doc_stride >= self.max_length:
            raise ModelLoadError(self.name, "option doc_stride must be smaller than max_length")
        where = self._checkpoint()
        try:
            # local_files_only: a bad folder or an uncached hub id fails now, not after network retries.
            tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            model = heads[task].from_pretrained(where, local_files_only=True).eval()
            if task != QUESTION_ANSWERING:
                extra = {"aggregation_strategy": aggregation} if task == TOKEN_CLASSIFICATION else {}
                self._pipeline = pipeline(task, model=model, tokenizer=tokenizer, device="cpu", **extra)
        except Exception as exc:  # OSError, ValueError, KeyError of an unknown architecture ...
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source!r}: {one_line(exc, 200)}") from exc
        self._model, self._tokenizer = model, tokenizer
        id2label = getattr(self._model.config, "id2label", None) or {}
        if task != QUESTION_ANSWERING and not self.manifest.labels:
            self.labels = [str(name) for _, name in sorted((int(i), n) for i, n in id2label.items())]

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        items = list(batch)
        if not items:
            return []
        with self._lock:
            if self.manifest.task == QUESTION_ANSWERING:
                return self._answer(items)
            if self.manifest.task == TEXT_CLASSIFICATION:
                found = self._pipeline(items, top_k=None, truncation=True, max_length=self.max_length, batch_size=len(items))
                return [
                    Classification(label=str(ranked[0]["label"]), scores={str(r["label"]): float(r["score"]) for r in ranked})
                    for ranked in found
                ]
            found = self._pipeline(items, batch_size=len(items))
            if len(items) == 1 and (not found or isinstance(found[0], dict)):
                found = [found]  # the pipeline unwraps a single input
            return [self._entities(text, spans) for text, spans in zip(items, found)]

    @staticmethod
    def _entities(text: str, spans: list[dict[str, Any]]) -> list[Entity]:
        entities = []
        for span in spans:
            start, end = span.get("start"), span.get("end")
            if start is None or end is None:  # a slow tokenizer gives no offsets
                start, end = 0, 0
            label = span.get("entity_group", span.get("entity", ""))
            entities.append(Entity(label=str(label), score=float(span["score"]), start=int(start), end=int(end), text=text[start:end]))
        return entities

    def _answer(self, questions: list[Question]) -> list[Answer]:
        import torch

        tokenizer = self._tokenizer
        encoded = tokenizer(
            [q.question for q in questions],
            [q.context for q in questions],
            truncation="only_second",
            max_length=self.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=True,
            return_tensors="pt",
        )
        windows = encoded.pop("overflow_to_sample_mapping").tolist()
        offsets = encoded.pop("offset_mapping").tolist()
        with torch.inference_mode():
            output = self._model(**encoded)
        starts = output.start_logits.float().numpy()
        ends = output.end_logits.float().numpy()
        best: list[Answer] = [Answer("", 0.0, 0, 0) for _ in questions]
        for w, sample in enumerate(windows):
            context = np.array([s == 1 for s in encoded.sequence_ids(w)])
            if not context.any():
                continue
            p_start = _softmax(np.where(context, starts[w], -np.inf))
            p_end = _softmax(np.where(context, ends[w], -np.inf))
            # Spans that end after they start, at most max_answer_length tokens long.
            scores = np.triu(np.tril(np.outer(p_start, p_end), self.max_answer_length - 1))
            i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
            score = float(scores[i, j])
            if score > best[sample].score:
                start, end = offsets[w][i][0], offsets[w][j][1]
                best[sample] = Answer(questions[sample].context[start:end], score, int(start), int(end))
        return best

    def unload(self) -> None:
        self._pipeline = self._model = self._tokenizer = None
        super().unload()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits))
    return shifted / shifted.sum()
