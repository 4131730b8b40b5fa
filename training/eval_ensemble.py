"""Score an ensemble beside its members on the members' own held-out split.

    python training/eval_ensemble.py --ensemble models/sentiment-ensemble

Loads the ensemble and its local members from the model repository, runs the
held-out texts of ``train_text_classifier.py`` (same corpus, cleaning, seed
and test fraction, so the split is the one the members' ``metrics.json``
report) through each of them with the server's own predict path, and writes
the ensemble's ``metrics.json``: its accuracy and macro F1 beside each
member's, as measured in this run (the members' figures are recomputed, and
must equal the ones their own training runs wrote).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from training.progress import bar  # noqa: E402
from training.train_text_classifier import (  # noqa: E402
    METRICS_FILE,
    TrainingError,
    base_versions,
    command_line,
    load_dataset,
    split,
    write_atomically,
    write_json,
)

DEFAULT_ENSEMBLE = REPO_ROOT / "models" / "sentiment-ensemble"
BATCH = 64


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="eval_ensemble.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", type=Path, default=DEFAULT_ENSEMBLE, help="the ensemble's folder (default: models/sentiment-ensemble)")
    parser.add_argument("--test-size", type=float, default=0.2, help="held-out fraction, as the members were trained (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, as the members were trained (default: 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def categories(predictor: Any, model: str, texts: list[str]) -> list[str]:
    """The category the server's predict path gives each text, in the order of ``texts``.

    Batches of texts of about one length, as ``train_embedding_classifier.embed``
    makes them: an encoder pads a batch to its longest text, and in corpus
    order nearly every batch of 64 holds a long plot synopsis (MiniLM's
    tokens of the default held-out split: 97k; padded in corpus order 603k,
    sorted 130k). The batches, and so the float rounding, are those of the
    training run's held-out embedding.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    found: list[str] = [""] * len(texts)
    with bar(len(texts), f"evaluate {model}", unit="text") as progress:
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            outputs = predictor.predict(model, [texts[i] for i in chunk]).outputs()
            for i, output in zip(chunk, outputs):
                found[i] = output["category"]
            progress.update(len(chunk))
    return found


def train(args: argparse.Namespace) -> dict[str, Any]:
    from predict import ModelRegistry, Predictor, dependency_closure
    from serving.cache import MemoryCache
    from serving.threads import set_compute_threads

    started = time.perf_counter()
    folder = args.ensemble.resolve()
    repository = folder.parent
    name = folder.name
    registry = ModelRegistry(repository, [name, *dependency_closure(repository, name)])
    registry.load_all()
    # A process of its own, not a Gunicorn worker: every core, set once the
    # libraries are loaded (set_compute_threads touches only what is imported).
    set_compute_threads(args.threads)
    ensemble = registry.get(name)
    members = [m.model for m in ensemble.members if m.url is None]
    if len(members) != len(ensemble.members):
        raise TrainingError(f"{name}: remote members cannot be scored offline; list local members only")
    dataset = load_dataset(None, None, None)
    _, x_test, _, y_test = split(dataset, args.test_size, args.seed)
    # Members first, cached: the ensemble's own calls of its members then read
    # their answers instead of computing them twice (the answers are the same).
    predictor = Predictor(registry, MemoryCache(max_items=2 * len(x_test) * len(members)), batching=False)
    scores: dict[str, Any] = {}
    for model in [*members, name]:
        predicted = categories(predictor, model, x_test)
        scores[model] = {
            "accuracy": round(float(accuracy_score(y_test, predicted)), 4),
            "macro_f1": round(float(f1_score(y_test, predicted, average="macro", zero_division=0)), 4),
        }
        print(f"{model}: held-out accuracy {scores[model]['accuracy']:.4f}, macro F1 {scores[model]['macro_f1']:.4f} ({len(x_test)} texts)")
    metrics = {
        **scores[name],
        "combine": ensemble.config.combine,
        "members": {m: scores[m] for m in members},
        "best_member": max(members, key=lambda m: scores[m]["accuracy"]),
        "n_test": len(x_test),
        "data": {"source": dataset.source},
        "seed": args.seed,
        "test_size": args.test_size,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": base_versions(),
    }
    for model in members:  # the split must be the one the member reports
        own = json.loads((repository / model / METRICS_FILE).read_text(encoding="utf-8"))
        if own.get("n_test") != len(x_test) or abs(own.get("accuracy", -1) - scores[model]["accuracy"]) > 1e-4:
            raise TrainingError(
                f"{model}: its metrics.json says accuracy {own.get('accuracy')} on {own.get('n_test')} texts, "
                f"this run {scores[model]['accuracy']} on {len(x_test)}: not the same split or model; nothing written"
            )
    write_atomically(folder, {METRICS_FILE: write_json(metrics)}, last=METRICS_FILE)
    print(f"wrote {folder / METRICS_FILE}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return command_line("eval_ensemble", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
