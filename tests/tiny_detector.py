"""Tiny, randomly initialised detection checkpoints for tests (no hub, no download).

``build_tiny_detector`` writes a Hugging Face checkpoint folder (config, weights,
image processor) of a few tens of thousands of parameters; the weights are random
but reproducible (``torch.manual_seed(0)``), so the boxes they predict are
meaningless yet the same on every run. Both YOLOS and DETR are supported: DETR's
backbone is transformers' own ``ResNetConfig`` (``use_timm_backbone=False``), so
neither timm nor torchvision is needed.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from transformers import (
    DetrConfig,
    DetrForObjectDetection,
    PreTrainedConfig,
    PreTrainedModel,
    ResNetConfig,
    YolosConfig,
    YolosForObjectDetection,
)
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil
from transformers.models.yolos.image_processing_pil_yolos import YolosImageProcessorPil

LABELS = ["cat", "dog", "person"]
# Small inputs keep a forward pass in the milliseconds; 16 divides both edges
# so YOLOS' patch grid is exact at the nominal size.
SIZE = {"shortest_edge": 64, "longest_edge": 96}


def _label_maps() -> dict[str, dict]:
    return {
        "id2label": dict(enumerate(LABELS)),
        "label2id": {name: i for i, name in enumerate(LABELS)},
    }


def _yolos() -> tuple[PreTrainedConfig, type[PreTrainedModel], object]:
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[64, 96],
        patch_size=16,
        num_detection_tokens=10,
        **_label_maps(),
    )
    return config, YolosForObjectDetection, YolosImageProcessorPil(size=SIZE)


def _detr() -> tuple[PreTrainedConfig, type[PreTrainedModel], object]:
    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage2"],
    )
    config = DetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        **_label_maps(),
    )
    return config, DetrForObjectDetection, DetrImageProcessorPil(size=SIZE)


_ARCHS = {"yolos": _yolos, "detr": _detr}


def build_tiny_detector(path: Path, arch: str = "yolos") -> Path:
    """Save a tiny random ``arch`` ("yolos" or "detr") checkpoint into ``path``; return ``path``."""
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, not {arch!r}")
    config, model_class, processor = _ARCHS[arch]()
    torch.manual_seed(0)
    model = model_class(config).eval()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_detector_model_folder(models_dir: Path, name: str = "tiny-yolos", arch: str = "yolos") -> Path:
    """Create ``models_dir/name`` with a ``checkpoint`` folder and a ``model.yaml`` serving it."""
    folder = Path(models_dir) / name
    build_tiny_detector(folder / "checkpoint", arch)
    manifest = {
        "task": "object-detection",
        "adapter": "transformers-detection",
        "version": "1",
        "source": "checkpoint",
        "description": f"Tiny {arch.upper()} with random weights: for tests only, its boxes mean nothing.",
    }
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return folder
