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
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

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
    return parser.parse_args(argv)


def train(args: argparse.Namespace) -> dict[str, Any]:
    from predict import ModelRegistry, Predictor, dependency_closure
    from serving.cache import MemoryCache

    started = time.perf_counter()
    folder = args.ensemble.resolve()
    repository = folder.parent
    name = folder.name
    registry = ModelRegistry(repository, [name, *dependency_closure(repository, name)])
    registry.load_all()
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
        predicted = []
        for start in range(0, len(x_test), BATCH):
            outputs = predictor.predict(model, x_test[start:start + BATCH]).outputs()
            predicted.extend(o["category"] for o in outputs)
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
