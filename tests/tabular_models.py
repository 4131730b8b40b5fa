"""Tabular model folders for the tests, each fitted here in a second or less.

- ``churn``: a scikit-learn ``Pipeline`` fitted on a pandas DataFrame with two
  numeric columns and a categorical one (``OneHotEncoder``), served with a
  manifest of task, adapter and source only.
- XGBoost and LightGBM models saved in their own formats (a classifier with
  a categorical column, a regressor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def customers(rows: int = 200, seed: int = 0):
    """A churn table: tenure, monthly charges, contract, and whether they left."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    contract = rng.choice(["monthly", "yearly", "two-year"], size=rows, p=[0.5, 0.3, 0.2])
    tenure = rng.integers(1, 72, size=rows).astype(float)
    charges = rng.uniform(18, 110, size=rows).round(2)
    risk = 1.5 * (contract == "monthly") - tenure / 30 + charges / 60 + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame({"tenure_months": tenure, "monthly_charges": charges, "contract": contract})
    return frame, np.where(risk > 0.5, "yes", "no")


def manifest(folder: Path, task: str, adapter: str, source: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(f"task: {task}\nadapter: {adapter}\nsource: {source}\n{extra}")
    return folder


def write_churn(root: Path, name: str = "churn") -> Path:
    """The pandas pipeline of the issue: numeric columns and one categorical, OneHotEncoder."""
    import joblib
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, churned = customers()
    model = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["contract"]), remainder=StandardScaler()),
        LogisticRegression(),
    ).fit(frame, churned)
    folder = manifest(root / name, "tabular-classification", "sklearn", "model.joblib")
    joblib.dump(model, folder / "model.joblib")
    return folder


def write_xgboost(root: Path) -> tuple[Path, Path]:
    """``xgb-churn`` (binary classifier, categorical contract) and ``xgb-diabetes`` (regressor)."""
    import pandas as pd
    import xgboost
    from sklearn.datasets import load_diabetes

    frame, churned = customers()
    frame = frame.assign(contract=pd.Categorical(frame["contract"]))
    classifier = xgboost.XGBClassifier(n_estimators=20, max_depth=3, enable_categorical=True, tree_method="hist")
    classifier.fit(frame, (churned == "yes").astype(int))
    churn = manifest(root / "xgb-churn", "tabular-classification", "xgboost", "model.json", "labels: [stays, leaves]\n")
    classifier.save_model(churn / "model.json")
    data = load_diabetes(as_frame=True, scaled=False)
    regressor = xgboost.XGBRegressor(n_estimators=30, max_depth=3).fit(data.data, data.target)
    diabetes = manifest(root / "xgb-diabetes", "tabular-regression", "xgboost", "model.ubj")
    regressor.save_model(diabetes / "model.ubj")
    return churn, diabetes


def write_lightgbm(root: Path) -> tuple[Path, Path]:
    """``lgb-iris`` (multiclass) and ``lgb-churn`` (regression of the charges, categorical contract)."""
    import lightgbm
    import pandas as pd
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    booster = lightgbm.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "min_data_in_leaf": 5},
        lightgbm.Dataset(iris.data, iris.target),
        num_boost_round=15,
    )
    classes = manifest(root / "lgb-iris", "tabular-classification", "lightgbm", "model.txt", "labels: [setosa, versicolor, virginica]\n")
    booster.save_model(str(classes / "model.txt"))
    frame, _ = customers()
    frame = frame.assign(contract=pd.Categorical(frame["contract"]))
    target = frame.pop("monthly_charges")
    regressor = lightgbm.train(
        {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}, lightgbm.Dataset(frame, target), num_boost_round=15
    )
    charges = manifest(root / "lgb-charges", "tabular-regression", "lightgbm", "model.txt")
    regressor.save_model(str(charges / "model.txt"))
    return classes, charges
