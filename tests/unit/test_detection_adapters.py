"""The two detection adapters: OpenCV Haar cascades and Hugging Face checkpoints."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tasks import OBJECT_DETECTION
from tasks.results import Detection
from adapters.haar_cascade import HaarCascadeDetector, label_from_file
from adapters.manifest import Manifest, load_manifest
from adapters.transformers_detection import TransformersDetector
from serving.errors import ModelLoadError
from serving.settings import REPO_ROOT
from tests.forkcheck import assert_predicts_after_fork
from tests.tiny_detector import LABELS, build_tiny_detector, write_detector_model_folder

# The astronaut's face, read off the 512 x 512 image (x1, y1, x2, y2).
ASTRONAUT_FACE = (170, 60, 260, 170)


def haar(source: str = "cv2:haarcascade_frontalface_default.xml", folder: Path = Path("."), **options) -> HaarCascadeDetector:
    manifest = Manifest(name="haar", task=OBJECT_DETECTION, adapter="haar-cascade", source=source, options=options)
    return HaarCascadeDetector(manifest, folder)


def hf(source: str, folder: Path, **options) -> TransformersDetector:
    manifest = Manifest(
        name="detector", task=OBJECT_DETECTION, adapter="transformers-detection", source=source, options=options
    )
    return TransformersDetector(manifest, folder)


def iou(det: Detection, box: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(det.x2, box[2]) - max(det.x1, box[0]))
    h = max(0.0, min(det.y2, box[3]) - max(det.y1, box[1]))
    inter = w * h
    union = (det.x2 - det.x1) * (det.y2 - det.y1) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return inter / union


def assert_valid(detections: list[Detection], image: Image.Image, labels: list[str]) -> None:
    width, height = image.size
    for det in detections:
        assert isinstance(det, Detection)
        assert det.label in labels
        assert 0.0 <= det.score <= 1.0
        assert 0.0 <= det.x1 <= det.x2 <= width
        assert 0.0 <= det.y1 <= det.y2 <= height


@pytest.fixture(scope="module")
def faces() -> HaarCascadeDetector:
    adapter = haar()
    adapter.load()
    return adapter


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.fromarray(skdata.chelsea())


# --- Haar cascades ----------------------------------------------------------


def test_haar_finds_the_one_face_of_the_astronaut(faces, astronaut):
    [detections] = faces.predict([astronaut])
    assert faces.labels == ["face"]
    assert len(detections) == 1
    face = detections[0]
    assert face.label == "face"
    assert iou(face, ASTRONAUT_FACE) > 0.6
    # Well above the server's default 0.3 score threshold.
    assert face.score > 0.8
    assert_valid(detections, astronaut, ["face"])


def test_haar_finds_nothing_on_a_plain_grey_image(faces):
    grey = Image.new("RGB", (320, 240), (128, 128, 128))
    assert faces.predict([grey]) == [[]]


def test_haar_batch_keeps_order_and_accepts_non_rgb(faces, astronaut):
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    results = faces.predict([grey, astronaut.convert("L"), astronaut])
    assert [len(r) for r in results] == [0, 1, 1]
    assert results[1] == results[2]


def test_haar_finds_no_human_face_on_the_cat(faces, chelsea):
    assert faces.predict([chelsea]) == [[]]


def test_cat_cascade_on_chelsea(chelsea):
    # Chelsea's face overfills the 451 x 300 frame (ears cut off), so
    # frontalcatface finds no whole cat face at the default options; with
    # min_neighbors=1 it boxes her nose and mouth. What this checks is that
    # another bundled cascade loads, is named from its file and scores in range.
    cats = haar("cv2:haarcascade_frontalcatface.xml", min_neighbors=1)
    cats.load()
    assert cats.labels == ["cat"]
    [detections] = cats.predict([chelsea])
    assert detections, "expected at least one candidate at min_neighbors=1"
    assert all(d.label == "cat" for d in detections)
    assert_valid(detections, chelsea, ["cat"])
    assert any(d.x1 < 300 < d.x2 and d.y1 < 240 < d.y2 for d in detections)  # her nose


def test_haar_scores_map_the_last_stage_margin_into_half_to_one(faces):
    weights = np.linspace(faces.threshold - 1, faces.threshold + 40, 50)
    scores = [faces.score(w) for w in weights]
    assert all(0.5 <= s < 1.0 + 1e-12 for s in scores)
    assert scores == sorted(scores)
    assert faces.score(faces.threshold) == pytest.approx(0.5)


def test_haar_concurrent_calls_match_sequential_ones(faces, astronaut, chelsea):
    images = [astronaut.resize((256, 256)), chelsea, Image.fromarray(skdata.coffee()).resize((300, 200))]
    expected = [faces.predict([image])[0] for image in images]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: faces.predict([images[i % 3]])[0], range(48)))
    assert results == [expected[i % 3] for i in range(48)]


@pytest.mark.parametrize(
    ("file", "label"),
    [
        ("haarcascade_frontalface_default.xml", "face"),
        ("haarcascade_frontalface_alt2.xml", "face"),
        ("haarcascade_profileface.xml", "face"),
        ("haarcascade_frontalcatface_extended.xml", "cat"),
        ("haarcascade_fullbody.xml", "fullbody"),
        ("haarcascade_eye.xml", "eye"),
        ("haarcascade_russian_plate_number.xml", "plate"),
    ],
)
def test_label_from_cascade_file_name(file, label):
    assert label_from_file(file) == label


def test_manifest_label_overrides_the_file_name():
    manifest = Manifest(
        name="people", task=OBJECT_DETECTION, adapter="haar-cascade",
        source="cv2:haarcascade_upperbody.xml", labels=["person"],
    )
    adapter = HaarCascadeDetector(manifest, Path("."))
    adapter.load()
    assert adapter.labels == ["person"]


def test_the_faces_manifest_of_the_repository_loads():
    folder = REPO_ROOT / "models" / "faces"
    adapter = HaarCascadeDetector(load_manifest(folder), folder)
    adapter.load()
    assert adapter.labels == ["face"]


def test_haar_cascade_path_relative_to_the_model_folder(tmp_path, astronaut):
    source = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
    (tmp_path / "cascade.xml").write_bytes(source.read_bytes())
    adapter = haar("cascade.xml", tmp_path)
    adapter.load()
    assert len(adapter.predict([astronaut])[0]) == 1


@pytest.mark.parametrize("source", ["cv2:haarcascade_no_such_thing.xml", "missing.xml", None])
def test_missing_cascade_names_the_model(source):
    with pytest.raises(ModelLoadError) as error:
        haar(source).load()
    assert error.value.model == "haar"
    assert "haar" in str(error.value)


@pytest.mark.parametrize(
    "text", ["", "not xml", "<?xml version='1.0'?><opencv_storage><x>1</x></opencv_storage>"]
)
def test_a_file_that_is_no_cascade_does_not_load(tmp_path, text):
    (tmp_path / "junk.xml").write_text(text)
    with pytest.raises(ModelLoadError, match="'junk.xml' is unreadable"):
        haar("junk.xml", tmp_path).load()


@pytest.mark.parametrize(
    "options", [{"scale_factor": 1.0}, {"min_neighbors": -1}, {"min_size": 2.5}, {"min_size": "24"}]
)
def test_bad_haar_options_do_not_load(options):
    with pytest.raises(ModelLoadError, match="option"):
        haar(**options).load()


# --- Hugging Face checkpoints -----------------------------------------------


@pytest.fixture(scope="module", params=["yolos", "detr"])
def tiny(request, tmp_path_factory) -> TransformersDetector:
    folder = tmp_path_factory.mktemp(request.param)
    build_tiny_detector(folder / "checkpoint", request.param)
    adapter = hf("checkpoint", folder)
    adapter.load()
    return adapter


def test_tiny_detector_labels_come_from_the_config(tiny):
    assert tiny.labels == LABELS


def test_tiny_detector_predicts_on_images_of_different_sizes(tiny, astronaut, chelsea):
    images = [astronaut, chelsea.resize((200, 90))]
    results = tiny.predict(images)
    assert len(results) == 2
    for image, detections in zip(images, results):
        # threshold 0.0 keeps every query: 10 detection tokens / queries.
        assert len(detections) == 10
        assert_valid(detections, image, LABELS)


def test_tiny_detector_result_does_not_depend_on_the_batch(tiny, astronaut, chelsea):
    alone = tiny.predict([chelsea])[0]
    assert tiny.predict([astronaut, chelsea])[1] == alone


def test_threshold_option_drops_low_scores(tmp_path, astronaut):
    build_tiny_detector(tmp_path / "checkpoint")
    adapter = hf("checkpoint", tmp_path, threshold=0.4)
    adapter.load()
    assert all(d.score > 0.4 for d in adapter.predict([astronaut])[0])


def test_written_model_folder_has_a_valid_manifest(tmp_path, astronaut):
    folder = write_detector_model_folder(tmp_path, "tiny-yolos")
    manifest = load_manifest(folder)
    assert (manifest.name, manifest.task, manifest.adapter, manifest.source) == (
        "tiny-yolos", OBJECT_DETECTION, "transformers-detection", "checkpoint"
    )
    adapter = TransformersDetector(manifest, folder)
    adapter.load()
    assert_valid(adapter.predict([astronaut])[0], astronaut, LABELS)


def test_tiny_weights_are_reproducible(tmp_path, astronaut):
    first = hf(str(build_tiny_detector(tmp_path / "a")), tmp_path)
    second = hf(str(build_tiny_detector(tmp_path / "b")), tmp_path)
    first.load()
    second.load()
    assert first.predict([astronaut]) == second.predict([astronaut])


@pytest.mark.parametrize("source", ["checkpoint", "/no/such/checkpoint", "./weights/v2"])
def test_missing_local_checkpoint_names_the_model(tmp_path, source):
    with pytest.raises(ModelLoadError) as error:
        hf(source, tmp_path).load()
    assert error.value.model == "detector"
    assert "not found" in error.value.reason


def test_a_folder_without_a_checkpoint_does_not_load(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load 'checkpoint'"):
        hf("checkpoint", tmp_path).load()


def test_unreachable_hub_id_is_a_one_line_load_error(tmp_path, monkeypatch):
    # Offline mode makes huggingface_hub fail at once instead of retrying ~25 s.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as error:
        hf("hustvl/yolos-tiny", tmp_path).load()
    assert "'hustvl/yolos-tiny'" in error.value.reason
    assert "\n" not in error.value.reason


def test_load_runs_no_torch_compute_so_forked_workers_do_not_hang(tmp_path):
    # A fresh interpreter: in this one, earlier tests have already started
    # OpenMP. If load() ran a forward pass, the forked child would hang.
    build_tiny_detector(tmp_path / "checkpoint")
    assert_predicts_after_fork(
        f"""
        from pathlib import Path
        from PIL import Image
        from adapters.manifest import Manifest
        from adapters.transformers_detection import TransformersDetector
        manifest = Manifest(name="t", task="object-detection", adapter="transformers-detection", source="checkpoint")
        adapter = TransformersDetector(manifest, Path({str(tmp_path)!r}))
        adapter.load()
        """,
        'adapter.predict([Image.new("RGB", (320, 240))])',
    )
