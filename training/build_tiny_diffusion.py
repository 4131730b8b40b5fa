"""Build the offline text-to-image model: a tiny Stable Diffusion pipeline with
random weights (``models/tiny-diffusion``).

No checkpoint can be downloaded here, so the pipeline is made from configs: a
small UNet, VAE and CLIP text encoder, randomly initialised from a fixed seed,
and a byte-level CLIP tokenizer written offline (every byte a token, no
merges). The real diffusers loading, denoising loop, step callback and VAE
decoding run; the images are noise. Serve a real checkpoint by pointing a
model folder's ``source`` at it (README: Text to image).

    python training/build_tiny_diffusion.py --out models/tiny-diffusion
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# Sizes: 64x64 images from 32x32 latents (the VAE halves once), about 2 M parameters.
LATENT = 32
WIDTH = 32


def byte_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with a vocabulary of the 256 byte symbols (the
    byte-level alphabet of GPT-2 and CLIP), alone and word-final, and no merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)


def build(out: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    byte_tokenizer(staging / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(staging / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(WIDTH, 2 * WIDTH), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=WIDTH,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(WIDTH, 2 * WIDTH),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=8, sample_size=2 * LATENT,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(staging / "pipeline", safe_serialization=True)
    shutil.rmtree(staging / "tokenizer")
    # Keep the folder's manifest (committed); replace only the weights.
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "pipeline", ignore_errors=True)
    (staging / "pipeline").rename(out / "pipeline")
    shutil.rmtree(staging, ignore_errors=True)
    parameters = sum(p.numel() for m in (unet, vae, text_encoder) for p in m.parameters())
    (out / "pipeline" / "RANDOM_WEIGHTS").write_text(
        f"Random weights (seed {seed}, {parameters:,} parameters): this pipeline's images are noise.\n",
        encoding="utf-8",
    )
    print(f"wrote {out / 'pipeline'}: {parameters:,} random parameters")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny-diffusion"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    build(args.out, args.seed)
    print(f"build_tiny_diffusion: done in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
