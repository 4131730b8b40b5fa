"""The ensemble adapter: its combine rules, its manifest checks, and local
members through the predictor (their answers, a failing member, the cache)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from adapters.ensemble import mean_forecast, mean_regression, mean_scores, vote
from predict import ModelRegistry, Predictor
from serving.cache import MemoryCache
from serving.errors import ModelLoadError, UpstreamFailed
from serving.settings import REPO_ROOT
from tests.faulty_adapter import write_faulty_model_folder

SENTIMENT = REPO_ROOT / "models" / "sentiment"


def test_vote_takes_the_majority_and_breaks_ties_by_the_mean_score():
    a = {"category": "fresh", "scores": {"fresh": 0.6, "rotten": 0.4}}
    b = {"category": "rotten", "scores": {"fresh": 0.1, "rotten": 0.9}}
    c = {"category": "fresh", "scores": {"fresh": 0.55, "rotten": 0.45}}
    assert vote([a, b, c]) == {"category": "fresh", "scores": {"fresh": 0.666667, "rotten": 0.333333}}
    # One each: rotten's mean score (0.65) beats fresh's (0.35).
    assert vote([a, b])["category"] == "rotten"
    # Without scores, the earlier member's label wins a tie.
    assert vote([{"category": "x"}, {"category": "y"}])["category"] == "x"


def test_mean_averages_probabilities_and_needs_them():
    a = {"category": "fresh", "scores": {"fresh": 0.6, "rotten": 0.4}}
    b = {"category": "rotten", "scores": {"fresh": 0.2, "rotten": 0.8}}
    assert mean_scores([a, b], ["a", "b"]) == {"category": "rotten", "scores": {"fresh": 0.4, "rotten": 0.6}}
    with pytest.raises(UpstreamFailed, match="b gave no scores"):
        mean_scores([a, {"category": "fresh"}], ["a", "b"])


def test_mean_of_regressors_and_of_forecasts():
    assert mean_regression([{"value": 1.0}, {"value": 2.0}, {"value": 6.0}]) == {"value": 3.0}
    assert mean_regression([{"values": [1.0, 10.0]}, {"values": [3.0, 20.0]}]) == {"values": [2.0, 15.0]}
    one = {"series": "s", "forecast": [{"time": "2024-01-01", "value": 1.0, "lower": 0.5, "upper": 2.0}]}
    two = {"series": "s", "forecast": [{"time": "2024-01-01", "value": 3.0, "lower": 1.5, "upper": 4.0}]}
    assert mean_forecast([one, two]) == {
        "series": "s", "forecast": [{"time": "2024-01-01", "value": 2.0, "lower": 1.0, "upper": 3.0}]
    }


def write_ensemble(root, name, members, **options):
    local = [m["model"] for m in members if "url" not in m]
    manifest = {"task": "text-classification", "adapter": "ensemble", "depends_on": local,
                "options": {"members": members, **options}}
    (root / name).mkdir()
    (root / name / "model.yaml").write_text(yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SENTIMENT, root / "sentiment")
    shutil.copytree(SENTIMENT, root / "sentiment-copy")
    (root / "sentiment-copy" / "model.yaml").write_text(
        (root / "sentiment" / "model.yaml").read_text().replace("version: \"1\"", "version: \"2\"")
    )
    write_faulty_model_folder(root)
    write_ensemble(root, "pair", [{"model": "sentiment"}, {"model": "sentiment-copy"}], combine="mean")
    write_ensemble(root, "both", [{"model": "sentiment"}, {"model": "sentiment-copy", "name": "copy"}], combine="concat")
    write_ensemble(root, "skips", [{"model": "sentiment"}, {"model": "faulty"}], combine="vote", on_failure="skip")
    write_ensemble(root, "fails", [{"model": "sentiment"}, {"model": "faulty"}], combine="vote", on_failure="fail")
    return root


@pytest.fixture(scope="module")
def predictor(repo):
    registry = ModelRegistry(repo)
    registry.load_all()
    return Predictor(registry, MemoryCache(1000), batching=True)


TEXTS = ["a warm, funny, moving film", "a dull, lifeless script"]


def test_the_mean_of_two_copies_is_the_model_itself(predictor):
    alone = predictor.predict("sentiment", TEXTS).outputs()
    paired = predictor.predict("pair", TEXTS).outputs()
    for one, two in zip(alone, paired):
        assert two == {**one, "partial": False, "failed": []}


def test_concat_gives_each_members_answer_by_name(predictor):
    (out,) = predictor.predict("both", TEXTS[:1]).outputs()
    (alone,) = predictor.predict("sentiment", TEXTS[:1]).outputs()
    assert out == {"answers": {"sentiment": alone, "copy": alone}, "partial": False, "failed": []}


def test_a_failing_member_is_skipped_and_named_and_the_partial_answer_not_cached(predictor):
    text = "boom goes a fine film"
    (out,) = predictor.predict("skips", [text]).outputs()
    (alone,) = predictor.predict("sentiment", [text]).outputs()
    assert out["partial"] is True and out["failed"] == ["faulty"]
    assert out["category"] == alone["category"]
    again = predictor.predict("skips", [text])
    assert again.cached == 0  # a partial answer is computed again, never served from the cache
    whole = predictor.predict("skips", ["fine"])
    assert predictor.predict("skips", ["fine"]).cached == 1 and whole.outputs()[0]["partial"] is False


def test_a_failing_member_fails_the_request_under_fail(predictor):
    with pytest.raises(UpstreamFailed) as caught:
        predictor.predict("fails", ["boom"])
    assert "faulty" in caught.value.details[0]["failed"]


@pytest.mark.parametrize(
    ("options", "message"),
    [({"members": [{"model": "sentiment"}], "combine": "median"}, "options.combine"),
     ({"members": []}, "options.members"),
     ({"members": [{"model": "sentiment"}], "timeout_ms": 0}, "options.timeout_ms"),
     ({"members": [{"model": "sentiment"}, {"model": "sentiment"}]}, "two members share a name"),
     ({"members": [{"model": "other"}]}, "must be listed in depends_on"),
     ({"members": [{"model": "x", "url": "ftp://host"}]}, r"options.members\[0\].url"),
     ({"members": [{"model": "x", "url": "http://h:1", "api_key_env": "NO_SUCH_VARIABLE_SET"}]}, "NO_SUCH_VARIABLE_SET")],
)
def test_bad_ensemble_manifests_stop_the_load_with_one_line(tmp_path, options, message):
    shutil.copytree(SENTIMENT, tmp_path / "sentiment")
    manifest = {"task": "text-classification", "adapter": "ensemble", "depends_on": ["sentiment"], "options": options}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match=message):
        ModelRegistry(tmp_path).load_all()


def test_a_member_of_another_task_is_refused(tmp_path):
    shutil.copytree(REPO_ROOT / "models" / "iris", tmp_path / "iris")
    manifest = {"task": "text-classification", "adapter": "ensemble", "depends_on": ["iris"],
                "options": {"members": [{"model": "iris"}]}}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match="does tabular-classification"):
        ModelRegistry(tmp_path).load_all()
