"""A model folder's own code (``adapter: model:Class``) and the Hugging Face
adapter (``transformers-pipeline``) with tiny random checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from predict import ModelRegistry, Predictor
from serving.errors import ModelLoadError, NotReady, ValidationFailed
from tasks.results import Answer
from tests.tiny_transformers import ENTITY_LABELS, SENTIMENT_LABELS, write_model_folder

ECHO = '''
from pydantic import BaseModel
from adapters.base import ModelAdapter
from . import helpers


class Text(BaseModel):
    text: str


class Echo(ModelAdapter):
    Input = Text
    Output = Text

    def load(self):
        pass

    def predict(self, batch):
        return [Text(text=helpers.PREFIX + item.text) for item in batch]
'''


def folder(root: Path, name: str, code: str, manifest: str, helpers: str | None = None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "model.py").write_text(code)
    if helpers is not None:
        (path / "helpers.py").write_text(helpers)
    (path / "model.yaml").write_text(manifest)
    return path


def load(root: Path, *names: str) -> ModelRegistry:
    registry = ModelRegistry(root, list(names))
    registry.load_all()
    return registry


def test_two_folders_each_with_a_model_py_and_a_sibling_module(tmp_path):
    manifest = "task: echo\nadapter: model:Echo\n"
    folder(tmp_path, "left", ECHO, manifest, helpers="PREFIX = 'L:'\n")
    folder(tmp_path, "right", ECHO, manifest, helpers="PREFIX = 'R:'\n")
    registry = load(tmp_path, "left", "right")
    predictor = Predictor(registry, batching=False)
    assert predictor.predict("left", [{"text": "hi"}]).outputs() == [{"text": "L:hi"}]
    assert predictor.predict("right", [{"text": "hi"}]).outputs() == [{"text": "R:hi"}]
    left, right = type(registry.get("left")), type(registry.get("right"))
    assert left is not right and left.__module__ != right.__module__
    assert left.__module__.startswith("serve_models.left_") and left.__module__ in sys.modules
    with pytest.raises(ValidationFailed) as caught:
        predictor.predict("left", [{"txt": "hi"}])
    # The model's own Input decides about unknown fields (pydantic ignores them by default).
    assert [d["field"] for d in caught.value.details] == ["inputs[0].text"]


@pytest.mark.parametrize(
    "code, manifest, message",
    [
        ("def broken(:\n", "task: echo\nadapter: model:Echo\n", "models/bad/model.py: SyntaxError: invalid syntax (line 1)"),
        ("import not_a_module_anywhere\n", "task: echo\nadapter: model:Echo\n", "ModuleNotFoundError: No module named 'not_a_module_anywhere'"),
        ("raise RuntimeError('no GPU here')\n", "task: echo\nadapter: model:Echo\n", "model.py: RuntimeError: no GPU here"),
        (ECHO, "task: echo\nadapter: model:Missing\n", "model.py has no 'Missing'"),
        ("class Echo:\n    pass\n", "task: echo\nadapter: model:Echo\n", "is not a ModelAdapter subclass"),
        (ECHO, "task: image-classification\nadapter: model:Echo\n", "its task needs a name of its own"),
        (ECHO.replace("    Input = Text\n    Output = Text\n", "    task = 'text-classification'\n"),
         "task: object-detection\nadapter: model:Echo\n", "serves text-classification, manifest says 'object-detection'"),
    ],
)
def test_a_bad_model_py_stops_start_up_with_one_line(tmp_path, monkeypatch, code, manifest, message):
    monkeypatch.chdir(tmp_path)  # paths in messages are shown from the working folder
    folder(tmp_path / "models", "bad", code, manifest, helpers="PREFIX = ''\n")
    with pytest.raises(ModelLoadError) as caught:
        load(tmp_path / "models", "bad")
    assert caught.value.model == "bad" and message in caught.value.reason
    assert "\n" not in str(caught.value)


def test_a_bad_optional_model_py_shows_in_readiness(tmp_path):
    folder(tmp_path, "good", ECHO, "task: echo\nadapter: model:Echo\n", helpers="PREFIX = ''\n")
    folder(tmp_path, "bad", "def broken(:\n", "task: echo\nadapter: model:Echo\noptional: true\n")
    registry = load(tmp_path)
    assert registry.ready and registry.states()["bad"].ready is False
    assert "SyntaxError" in registry.states()["bad"].reason
    with pytest.raises(NotReady):
        Predictor(registry).predict("bad", [{"text": "x"}])


def test_a_missing_model_py_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.yaml").write_text("task: echo\nadapter: model:Echo\n")
    with pytest.raises(ModelLoadError, match=r"m/model.py not found"):
        load(tmp_path, "m")


def test_the_digits_folder_serves_grids_and_images(registry_with_digits):
    predictor = Predictor(registry_with_digits, batching=False)
    grid = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
            [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]
    (output,) = predictor.predict("digits", [grid]).outputs()
    assert output["digit"] == 0 and set(output["scores"]) == {str(d) for d in range(10)}
    with pytest.raises(ValidationFailed) as caught:
        predictor.predict("digits", [grid[:7]])
    assert [d["field"] for d in caught.value.details] == ["inputs[0].grid"]


@pytest.fixture(scope="module")
def registry_with_digits():
    from serving.settings import REPO_ROOT

    if not (REPO_ROOT / "models" / "digits" / "weights.pt").is_file():
        pytest.fail("models/digits/weights.pt is missing: run `make models` first")
    return load(REPO_ROOT / "models", "digits")


# --- transformers-pipeline ----------------------------------------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    write_model_folder(root, "ner", "token-classification")
    write_model_folder(root, "sentiment-bert", "text-classification")
    write_model_folder(root, "qa", "question-answering", "options: {max_length: 48, doc_stride: 16, max_answer_length: 8}\n")
    return load(root)


def test_token_classification_gives_entities_with_offsets(hf_models):
    text = "Ann lives in Berlin and works for Siemens in Munich."
    predictor = Predictor(hf_models, batching=False)
    one, two = predictor.predict("ner", [text, "hi there"]).outputs()
    assert hf_models.get("ner").labels == ENTITY_LABELS
    for entity in one["entities"] + two["entities"]:
        assert entity["label"] in {"PER", "LOC", "ORG"} and 0 <= entity["score"] <= 1
    assert all(text[e["start"]:e["end"]] == e["text"] for e in one["entities"])
    # The same text alone and in a batch: the same entities (random weights, real code).
    (alone,) = predictor.predict("ner", [text], cached=False).outputs()
    assert [(e["start"], e["end"], e["label"]) for e in alone["entities"]] == [
        (e["start"], e["end"], e["label"]) for e in one["entities"]
    ]


def test_text_classification_through_the_pipeline_scores_every_label(hf_models):
    (output,) = Predictor(hf_models, batching=False).predict("sentiment-bert", ["a warm film"]).outputs()
    assert set(output["scores"]) == set(SENTIMENT_LABELS)
    assert sum(output["scores"].values()) == pytest.approx(1, abs=1e-4)
    assert output["category"] == max(output["scores"], key=output["scores"].get)


def test_question_answering_picks_a_span_of_the_context_across_windows(hf_models):
    predictor = Predictor(hf_models, batching=False)
    long_context = " ".join(f"Sentence number {i} says that Ann lives in Berlin." for i in range(12))
    items = [{"question": "Where does Ann live?", "context": long_context}, {"question": "Who?", "context": "Bob."}]
    outcome = predictor.predict("qa", items)
    adapter = hf_models.get("qa")
    for result, item in zip(outcome.results, items):
        assert isinstance(result, Answer) and 0 < result.score <= 1
        assert item["context"][result.start:result.end] == result.answer
        # At most max_answer_length tokens.
        assert len(adapter._tokenizer(result.answer, add_special_tokens=False)["input_ids"]) <= 8
    # The long context is split into windows: the tokenizer makes several of max_length 48.
    windows = adapter._tokenizer(items[0]["question"], items[0]["context"], truncation="only_second", max_length=48,
                                 stride=16, return_overflowing_tokens=True)["input_ids"]
    assert len(windows) > 3


def test_bad_pipeline_options_and_folders_stop_the_load(tmp_path):
    write_model_folder(tmp_path, "qa", "question-answering", "options: {max_length: 32, doc_stride: 32}\n")
    with pytest.raises(ModelLoadError, match="doc_stride must be smaller than max_length"):
        load(tmp_path, "qa")
    write_model_folder(tmp_path, "ner", "token-classification", "options: {aggregation_strategy: loud}\n")
    with pytest.raises(ModelLoadError, match="aggregation_strategy must be one of"):
        load(tmp_path, "ner")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "model.yaml").write_text("task: token-classification\nadapter: transformers-pipeline\nsource: nowhere\n")
    with pytest.raises(ModelLoadError, match="checkpoint folder 'nowhere' not found"):
        load(tmp_path, "gone")
    (tmp_path / "gone" / "model.yaml").write_text("task: object-detection\nadapter: transformers-pipeline\nsource: x\n")
    with pytest.raises(ModelLoadError, match="manifest says 'object-detection'"):
        load(tmp_path, "gone")
