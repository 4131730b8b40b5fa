"""Train the ``digits`` model: the small torch network of ``models/digits/model.py``
on scikit-learn's handwritten digits (1,797 8x8 images; no network)::

    python training/train_digits.py --out models/digits --min-accuracy 0.95

It writes ``weights.pt`` (the network's state dict, loaded with
``weights_only=True``: no pickled code), ``metrics.json`` (held-out accuracy,
per-digit recall, the split, versions) and ``SHA256SUMS``, atomically, only if
the held-out accuracy reaches ``--min-accuracy``. Deterministic: the same seed
gives the same split and the same weights on one machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

from adapters.loading import folder_module  # noqa: E402
from training.progress import bar  # noqa: E402
from training.train_text_classifier import (  # noqa: E402
    METRICS_FILE,
    TrainingError,
    base_versions,
    command_line,
    one_line,
    write_atomically,
    write_json,
)

DEFAULT_OUT = REPO_ROOT / "models" / "digits"
WEIGHTS_FILE = "weights.pt"
EPOCHS = 60
BATCH = 64
LEARNING_RATE = 3e-3
# The network is small (22 steps of 64 8x8 grids per epoch): a second thread
# only adds OpenMP hand-offs, and they stall when the cores are busy (with
# other test suites running on these 2 cores: 59-147 s with two threads,
# 7-13 s with one). One thread also gives the same weights whatever the
# machine's core count.
THREADS = 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_digits.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the model folder, with model.py (default: models/digits)")
    parser.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default: 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the initial weights (default: 0)")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="fail, writing nothing, below this held-out accuracy")
    return parser.parse_args(argv)


def split(seed: int, test_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """load_digits as grids scaled to [0, 1]: x_train, x_test, y_train, y_test (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grids = (digits.images / 16.0).astype(np.float32)
    return train_test_split(grids, digits.target, test_size=test_size, random_state=seed, stratify=digits.target)


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    module = folder_module(args.out, "model", args.out.name)
    x_train, x_test, y_train, y_test = split(args.seed, args.test_size)
    torch.set_num_threads(THREADS)
    torch.manual_seed(args.seed)
    net = module.DigitsNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    net.train()
    with bar(EPOCHS, "train digits", unit="epoch") as progress:
        for _ in range(EPOCHS):
            for batch in torch.randperm(len(inputs), generator=generator).split(BATCH):
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(inputs[batch]), targets[batch])
                loss.backward()
                optimiser.step()
            progress.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
            progress.update()
    seconds = time.perf_counter() - started
    net.eval()
    with torch.inference_mode():
        predicted = net(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    accuracy = float((predicted == y_test).mean())
    metrics = {
        "accuracy": round(accuracy, 4),
        "recall_per_digit": {str(d): round(float((predicted[y_test == d] == d).mean()), 4) for d in range(10)},
        "n_train": len(x_train),
        "n_test": len(x_test),
        "data": {"source": "sklearn.datasets.load_digits"},
        "training": {
            "epochs": EPOCHS, "batch_size": BATCH, "learning_rate": LEARNING_RATE, "threads": THREADS,
            "seconds": round(seconds, 2),
        },
        "seed": args.seed,
        "test_size": args.test_size,
        "versions": {**base_versions(), "torch": torch.__version__},
    }
    print(f"held-out accuracy: {accuracy:.4f} (n_train={len(x_train)}, n_test={len(x_test)}, fit {seconds:.1f}s)")
    if accuracy < args.min_accuracy:
        raise TrainingError(f"held-out accuracy {accuracy:.4f} is below --min-accuracy {args.min_accuracy}; nothing written")
    state = {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
    try:
        write_atomically(
            args.out,
            {METRICS_FILE: write_json(metrics), WEIGHTS_FILE: lambda path: torch.save(state, path)},
            last=WEIGHTS_FILE,
        )
    except OSError as exc:
        raise TrainingError(f"cannot write to {args.out}: {one_line(exc)}") from None
    print(f"wrote {args.out / WEIGHTS_FILE}, {METRICS_FILE}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return command_line("train_digits", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
