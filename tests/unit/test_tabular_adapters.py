"""The tabular adapters against the libraries' own predictions: scikit-learn
estimators and pipelines, XGBoost and LightGBM models in their own formats."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest

from predict import ModelRegistry, Predictor
from serving.errors import ModelLoadError, ValidationFailed
from tasks.tabular import NUMBER, STRING
from tests.tabular_models import customers, manifest, write_churn, write_lightgbm, write_xgboost

ROWS = [
    {"tenure_months": 3, "monthly_charges": 80.5, "contract": "monthly"},
    {"tenure_months": 40, "monthly_charges": 60.0, "contract": "two-year"},
    {"tenure_months": 12, "monthly_charges": 19.9, "contract": "yearly"},
]


def serve(root, *names):
    registry = ModelRegistry(root, list(names))
    registry.load_all()
    return registry, Predictor(registry, batching=False)


def test_a_pandas_pipeline_is_served_from_a_three_key_manifest(tmp_path):
    folder = write_churn(tmp_path)
    registry, predictor = serve(tmp_path, "churn")
    features = registry.get("churn").features
    assert [(f.name, f.kind, f.nullable) for f in features] == [
        ("tenure_months", NUMBER, False), ("monthly_charges", NUMBER, False), ("contract", STRING, False),
    ]
    assert features[2].categories == ("monthly", "two-year", "yearly")
    model = joblib.load(folder / "model.joblib")
    expected = model.predict_proba(pd.DataFrame(ROWS))
    outcome = predictor.predict("churn", ROWS)
    assert [r.label for r in outcome.results] == list(model.predict(pd.DataFrame(ROWS)))
    for result, row in zip(outcome.results, expected):
        assert [result.scores[label] for label in model.classes_] == pytest.approx(list(row), abs=1e-12)
    with pytest.raises(ValidationFailed) as caught:
        predictor.predict("churn", [{**ROWS[0], "contract": "weekly"}, ROWS[1]])
    assert [d["field"] for d in caught.value.details] == ["inputs[0].contract"]


def test_a_regressor_answers_its_own_predict_and_multi_output_gives_values(tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.multioutput import MultiOutputRegressor

    data = load_diabetes(as_frame=True, scaled=False)
    one = Ridge().fit(data.data, data.target)
    joblib.dump(one, manifest(tmp_path / "one", "tabular-regression", "sklearn", "m.joblib") / "m.joblib")
    two = MultiOutputRegressor(Ridge()).fit(data.data, np.column_stack([data.target, data.target / 2]))
    joblib.dump(two, manifest(tmp_path / "two", "tabular-regression", "sklearn", "m.joblib") / "m.joblib")
    _, predictor = serve(tmp_path, "one", "two")
    rows = data.data.iloc[:5].to_dict("records")
    values = [r.value for r in predictor.predict("one", rows).results]
    assert values == pytest.approx(one.predict(data.data.iloc[:5]).tolist(), abs=1e-9)
    pairs = [r.values for r in predictor.predict("two", rows).results]
    assert np.allclose(pairs, two.predict(data.data.iloc[:5]))


def test_a_classifier_without_predict_proba_answers_the_label_alone(tmp_path):
    from sklearn.svm import LinearSVC

    frame, churned = customers()
    numeric = frame[["tenure_months", "monthly_charges"]]
    joblib.dump(LinearSVC().fit(numeric, churned), manifest(tmp_path / "svc", "tabular-classification", "sklearn", "m.joblib") / "m.joblib")
    _, predictor = serve(tmp_path, "svc")
    outcome = predictor.predict("svc", [{"tenure_months": 3, "monthly_charges": 80.5}])
    assert outcome.results[0].scores is None and outcome.outputs() == [{"category": outcome.results[0].label}]


def test_a_model_fitted_on_numpy_needs_the_manifest_features(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.datasets import load_iris

    iris = load_iris()
    fitted = LogisticRegression(max_iter=500).fit(iris.data, iris.target_names[iris.target])
    joblib.dump(fitted, manifest(tmp_path / "bare", "tabular-classification", "sklearn", "m.joblib") / "m.joblib")
    with pytest.raises(ModelLoadError, match="list them in the manifest"):
        serve(tmp_path, "bare")
    manifest(tmp_path / "bare", "tabular-classification", "sklearn", "m.joblib", "features: [a, b, c]\n")
    with pytest.raises(ModelLoadError, match="lists 3 features; the model takes 4"):
        serve(tmp_path, "bare")
    manifest(tmp_path / "bare", "tabular-classification", "sklearn", "m.joblib", "features: [sl, sw, pl, pw]\n")
    _, predictor = serve(tmp_path, "bare")
    outcome = predictor.predict("bare", [{"sl": 5.1, "sw": 3.5, "pl": 1.4, "pw": 0.2}])
    assert outcome.results[0].label == fitted.predict([[5.1, 3.5, 1.4, 0.2]])[0]


def test_manifest_features_must_be_the_models_own(tmp_path):
    write_churn(tmp_path)
    manifest(tmp_path / "churn", "tabular-classification", "sklearn", "model.joblib", "features: [contract, tenure_months, monthly_charges]\n")
    with pytest.raises(ModelLoadError, match="are not the model's"):
        serve(tmp_path, "churn")


def test_wrong_kind_of_estimator_for_the_task_stops_the_load(tmp_path):
    from sklearn.linear_model import LinearRegression

    frame, _ = customers()
    numeric = frame[["tenure_months"]]
    fitted = LinearRegression().fit(numeric, frame["monthly_charges"])
    joblib.dump(fitted, manifest(tmp_path / "lr", "tabular-classification", "sklearn", "m.joblib") / "m.joblib")
    with pytest.raises(ModelLoadError, match="without classes_"):
        serve(tmp_path, "lr")


def test_xgboost_models_answer_as_the_booster_does(tmp_path):
    import xgboost

    churn, diabetes = write_xgboost(tmp_path)
    registry, predictor = serve(tmp_path, "xgb-churn", "xgb-diabetes")
    contract = registry.get("xgb-churn").features[2]
    assert (contract.kind, contract.categories) == (STRING, ("monthly", "two-year", "yearly"))
    booster = xgboost.Booster(model_file=str(churn / "model.json"))
    frame = pd.DataFrame(ROWS).astype({"contract": pd.CategoricalDtype(["monthly", "two-year", "yearly"])})
    positive = booster.inplace_predict(frame)
    results = predictor.predict("xgb-churn", ROWS).results
    assert [r.scores["leaves"] for r in results] == pytest.approx(positive.tolist(), abs=1e-6)
    assert [r.label for r in results] == ["leaves" if p > 0.5 else "stays" for p in positive]
    with pytest.raises(ValidationFailed):
        predictor.predict("xgb-churn", [{**ROWS[0], "contract": "weekly"}])
    # A missing value is XGBoost's own missing value.
    assert predictor.predict("xgb-churn", [{**ROWS[0], "contract": None, "tenure_months": None}]).results[0].scores

    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True, scaled=False)
    regressor = xgboost.XGBRegressor()
    regressor.load_model(diabetes / "model.ubj")
    values = [r.value for r in predictor.predict("xgb-diabetes", data.data.iloc[:4].to_dict("records")).results]
    assert values == pytest.approx(regressor.predict(data.data.iloc[:4]).tolist(), abs=1e-4)


def test_lightgbm_models_answer_as_the_booster_does(tmp_path):
    import lightgbm
    from sklearn.datasets import load_iris

    classes, charges = write_lightgbm(tmp_path)
    registry, predictor = serve(tmp_path, "lgb-iris", "lgb-charges")
    iris = load_iris(as_frame=True)
    booster = lightgbm.Booster(model_file=str(classes / "model.txt"))
    rows = iris.data.iloc[[0, 60, 120]]
    expected = booster.predict(rows)
    # LightGBM keeps its column names with spaces as underscores: those are the features.
    assert [f.name for f in registry.get("lgb-iris").features] == booster.feature_name() == [
        "sepal_length_(cm)", "sepal_width_(cm)", "petal_length_(cm)", "petal_width_(cm)"
    ]
    records = [dict(zip(booster.feature_name(), row)) for row in rows.to_numpy().tolist()]
    results = predictor.predict("lgb-iris", records).results
    assert [r.label for r in results] == ["setosa", "versicolor", "virginica"]
    for result, row in zip(results, expected):
        assert [result.scores[label] for label in ("setosa", "versicolor", "virginica")] == pytest.approx(list(row))
    contract = registry.get("lgb-charges").features[1]
    assert (contract.name, contract.kind, contract.categories) == ("contract", STRING, ("monthly", "two-year", "yearly"))
    regressor = lightgbm.Booster(model_file=str(charges / "model.txt"))
    records = [{"tenure_months": r["tenure_months"], "contract": r["contract"]} for r in ROWS]
    frame = pd.DataFrame(records).astype({"contract": pd.CategoricalDtype(["monthly", "two-year", "yearly"])})
    values = [r.value for r in predictor.predict("lgb-charges", records).results]
    assert values == pytest.approx(regressor.predict(frame).tolist())


def test_a_gradient_boosting_model_refuses_the_other_task(tmp_path):
    write_lightgbm(tmp_path)
    manifest(tmp_path / "lgb-iris", "tabular-regression", "lightgbm", "model.txt")
    with pytest.raises(ModelLoadError, match="objective multiclass, which does not do tabular-regression"):
        serve(tmp_path, "lgb-iris")
    write_xgboost(tmp_path)
    manifest(tmp_path / "xgb-churn", "tabular-classification", "xgboost", "model.json", "labels: [a, b, c]\n")
    with pytest.raises(ModelLoadError, match="3 labels; the model has 2 classes"):
        serve(tmp_path, "xgb-churn")
