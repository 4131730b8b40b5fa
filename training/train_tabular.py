"""Train a tabular scikit-learn model that the ``sklearn`` adapter serves.

Built-in datasets (scikit-learn ships them; no network)::

    python training/train_tabular.py --dataset iris --out models/iris            # classification
    python training/train_tabular.py --dataset diabetes --out models/diabetes    # regression

or any CSV with a header row (numeric columns are numbers, the rest strings)::

    python training/train_tabular.py --csv churn.csv --target churned --kind classification --out models/churn

The model is a ``Pipeline`` fitted on a pandas DataFrame, so it carries its
column names (``feature_names_in_``) and the server reads its features from
it: the manifest needs only ``task``, ``adapter: sklearn`` and ``source``.
Numeric columns are imputed (median) and standardised, string columns
one-hot encoded (unknown values ignored); the estimator is a logistic
regression or a ridge regression with its penalty chosen by cross-validation.

It writes ``model.joblib``, ``labels.json`` (classifiers), ``metrics.json``
(held-out scores beside a baseline that predicts the training mean or the
most frequent class, the split, the library versions) and ``SHA256SUMS``,
atomically, and only if the held-out score reaches ``--min-score`` (accuracy
for classification, R^2 for regression).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

from training.train_text_classifier import (  # noqa: E402
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TrainingError,
    base_versions,
    command_line,
    evaluate,
    one_line,
    write_atomically,
    write_json,
)

CLASSIFICATION, REGRESSION = "classification", "regression"
DATASETS = {"iris": CLASSIFICATION, "diabetes": REGRESSION}


def load_frame(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """Features (a DataFrame), target, the kind of problem and where the data came from."""
    import pandas as pd
    from sklearn import datasets

    if args.dataset == "iris":
        data = datasets.load_iris(as_frame=True)
        # String labels, so the model answers "setosa", not 0.
        return data.data, pd.Series(data.target_names[data.target], name="species"), CLASSIFICATION, "sklearn.datasets.load_iris"
    if args.dataset == "diabetes":
        # Raw units (age in years, BMI ...), not scikit-learn's centred and scaled copy.
        data = datasets.load_diabetes(as_frame=True, scaled=False)
        return data.data, data.target, REGRESSION, "sklearn.datasets.load_diabetes(scaled=False)"
    try:
        frame = pd.read_csv(args.csv)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{args.csv}: cannot read as CSV: {one_line(exc)}") from None
    if args.target not in frame.columns:
        raise TrainingError(f"{args.csv}: no column {args.target!r} (columns: {', '.join(map(str, frame.columns))})")
    frame = frame.dropna(subset=[args.target])
    target = frame.pop(args.target)
    if frame.shape[1] == 0:
        raise TrainingError(f"{args.csv}: no feature columns beside {args.target!r}")
    if args.kind == CLASSIFICATION:
        target = target.astype(str)
    return frame, target, args.kind, str(args.csv)


def build_pipeline(frame: Any, kind: str) -> Pipeline:
    """Imputed, standardised numbers and one-hot strings into a linear model."""
    numeric = [c for c in frame.columns if frame[c].dtype.kind in "fiub"]
    strings = [c for c in frame.columns if c not in numeric]
    steps = []
    if numeric:
        steps.append(("numbers", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric))
    if strings:
        steps.append(("strings", OneHotEncoder(handle_unknown="ignore"), strings))
    model = LogisticRegression(max_iter=2000) if kind == CLASSIFICATION else RidgeCV(alphas=np.logspace(-3, 3, 13))
    if not strings:  # all numeric: a plain pipeline, whose first step takes missing values
        return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()), ("model", model)])
    return Pipeline([("columns", ColumnTransformer(steps)), ("model", model)])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_tabular.py", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=sorted(DATASETS), help="a dataset scikit-learn ships")
    source.add_argument("--csv", type=Path, help="a CSV file with a header row")
    parser.add_argument("--target", help="the column to predict (with --csv)")
    parser.add_argument("--kind", choices=(CLASSIFICATION, REGRESSION), help="the problem (with --csv)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. models/iris")
    parser.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default: 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the split (default: 0)")
    parser.add_argument(
        "--min-score", type=float, default=None,
        help="fail, writing nothing, below this held-out accuracy (classification) or R^2 (regression)",
    )
    args = parser.parse_args(argv)
    if args.csv is not None and (args.target is None or args.kind is None):
        parser.error("--csv needs --target and --kind")
    if not 0.0 < args.test_size < 1.0:
        parser.error("--test-size must be between 0 and 1")
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, evaluate on the held-out split and write the artifacts; returns the metrics."""
    frame, target, kind, source = load_frame(args)
    stratify = target if kind == CLASSIFICATION else None
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            frame, target, test_size=args.test_size, random_state=args.seed, stratify=stratify
        )
        pipeline = build_pipeline(frame, kind)
        started = time.perf_counter()
        pipeline.fit(x_train, y_train)
    except ValueError as exc:  # too few rows per class, a column of one value ...
        raise TrainingError(f"{source}: cannot train on {len(frame)} rows: {one_line(exc)}") from None
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {"kind": kind, "n_train": len(x_train), "n_test": len(x_test)}
    files: dict[str, Callable[[Path], None]] = {}
    if kind == CLASSIFICATION:
        scores = evaluate(pipeline, x_test, y_test)
        majority = y_train.value_counts().idxmax()
        score, name = scores["accuracy"], "accuracy"
        metrics.update(
            accuracy=round(scores["accuracy"], 4),
            macro_f1=round(scores["macro_f1"], 4),
            per_class=scores["per_class"],
            baseline_accuracy=round(float((y_test == majority).mean()), 4),
            labels=[str(c) for c in pipeline.classes_],
        )
        files[LABELS_FILE] = write_json(metrics["labels"])
        summary = f"accuracy {score:.4f} (macro F1 {scores['macro_f1']:.4f}, majority class {metrics['baseline_accuracy']:.4f})"
    else:
        predicted = pipeline.predict(x_test)
        score, name = float(r2_score(y_test, predicted)), "r2"
        baseline = np.full(len(y_test), float(np.mean(y_train)))
        metrics.update(
            r2=round(score, 4),
            mae=round(float(mean_absolute_error(y_test, predicted)), 4),
            baseline_mae=round(float(mean_absolute_error(y_test, baseline)), 4),
        )
        summary = f"R^2 {score:.4f} (MAE {metrics['mae']:.2f}, predicting the mean {metrics['baseline_mae']:.2f})"
    metrics.update(
        features=[str(c) for c in frame.columns],
        data={"source": source, "rows": len(frame)},
        seed=args.seed,
        test_size=args.test_size,
        training_seconds=round(seconds, 3),
        versions=base_versions(),
    )
    print(f"held-out {summary}, n_train={len(x_train)}, n_test={len(x_test)}")
    if args.min_score is not None and score < args.min_score:
        raise TrainingError(f"held-out {name} {score:.4f} is below --min-score {args.min_score}; nothing written")
    import joblib

    files[METRICS_FILE] = write_json(metrics)
    files[MODEL_FILE] = lambda path: joblib.dump(pipeline, path, compress=3)
    try:
        write_atomically(args.out, files)
    except OSError as exc:
        raise TrainingError(f"cannot write to {args.out}: {one_line(exc)}") from None
    print(f"wrote {args.out / MODEL_FILE}, {METRICS_FILE}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return command_line("train_tabular", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
