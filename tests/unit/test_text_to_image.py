"""The text-to-image task and the diffusers adapter, on the tiny pipeline of
random weights that `make models` builds (models/tiny-diffusion): the real
diffusers loading, denoising loop, step callback and VAE decoding run."""

from __future__ import annotations

import io
import shutil

import pytest
import yaml
from PIL import Image

from adapters.progress import Stopped, reporting
from predict import ModelRegistry, Predictor, build_adapter, load_manifest
from serving.errors import JobsOnly, ModelLoadError, NotReady, ValidationFailed
from serving.settings import REPO_ROOT
from tasks import Limits
from tasks.generation import TextToImage, png_bytes

TINY = REPO_ROOT / "models" / "tiny-diffusion"


@pytest.fixture(scope="module")
def jobs_registry() -> ModelRegistry:
    if not (TINY / "pipeline" / "model_index.json").is_file():
        pytest.fail("models/tiny-diffusion/pipeline is missing: run `make models` first")
    registry = ModelRegistry(REPO_ROOT / "models", ["tiny-diffusion"], runs_jobs=True)
    registry.load_all()
    return registry


@pytest.fixture(scope="module")
def predictor(jobs_registry) -> Predictor:
    return Predictor(jobs_registry, batching=False)


def draw(predictor: Predictor, **item):
    outcome = predictor.predict("tiny-diffusion", [{"prompt": "a sunset over a beach", **item}], cached=False)
    return outcome.results[0], outcome.outputs()[0]


def test_an_input_takes_the_manifests_defaults_and_reports_what_was_drawn(predictor):
    _, task = predictor.model("tiny-diffusion")
    limits = Limits.defaults()
    decoded = task.decode("a cat", task.parameters(None), limits, "inputs[0]").value
    manifest = yaml.safe_load((TINY / "model.yaml").read_text())["options"]
    assert (decoded.num_steps, decoded.width, decoded.height) == (manifest["num_steps"], manifest["width"], manifest["height"])
    assert decoded.guidance_scale == manifest["guidance_scale"] and decoded.negative_prompt == ""
    assert 0 <= decoded.seed < 2**32  # drawn at random, and reported
    image, output = draw(predictor, num_steps=2, seed=7, width=96, height=32)
    assert image.size == (96, 32)
    assert output == {"width": 96, "height": 32, "seed": 7, "num_steps": 2, "guidance_scale": 7.5,
                      "media_type": "image/png"}


@pytest.mark.parametrize("item, field", [
    ({"prompt": " "}, "inputs[0]"),
    ({"prompt": "a cat", "num_steps": 0}, "inputs[0].num_steps"),
    ({"prompt": "a cat", "num_steps": 51}, "inputs[0].num_steps"),
    ({"prompt": "a cat", "width": 100}, "inputs[0].width"),  # not a multiple of 8
    ({"prompt": "a cat", "height": 512}, "inputs[0].height"),  # above max_size
    ({"prompt": "a cat", "seed": -1}, "inputs[0].seed"),
    ({"prompt": "a cat", "steps": 5}, "inputs[0].steps"),  # unknown field
    (42, "inputs[0]"),
])
def test_inputs_outside_the_bounds_are_refused_naming_the_field(predictor, item, field):
    with pytest.raises(ValidationFailed) as refused:
        predictor.decode("tiny-diffusion", [item])
    assert field in {d["field"] for d in refused.value.details} or any(
        d["field"].startswith(field) for d in refused.value.details)


def test_the_same_seed_gives_the_same_png_and_another_seed_another(predictor):
    first, _ = draw(predictor, num_steps=3, seed=11)
    again, _ = draw(predictor, num_steps=3, seed=11)
    other, _ = draw(predictor, num_steps=3, seed=12)
    assert png_bytes(first) == png_bytes(again)
    assert png_bytes(first) != png_bytes(other)
    decoded = Image.open(io.BytesIO(png_bytes(first)))
    assert decoded.format == "PNG" and decoded.size == (64, 64) and decoded.mode == "RGB"


def test_every_step_is_reported_and_a_reporter_stops_the_call_between_steps(predictor):
    seen = []
    with reporting(lambda done, total: seen.append((done, total))):
        draw(predictor, num_steps=6, seed=1)
    assert seen == [(i, 6) for i in range(1, 7)]

    stopped_at = []

    def stop_after_three(done: int, total: int) -> None:
        stopped_at.append(done)
        if done == 3:
            raise Stopped

    with reporting(stop_after_three), pytest.raises(Stopped):
        draw(predictor, num_steps=20, seed=1)
    assert stopped_at == [1, 2, 3]  # no step ran after the stop


def test_a_web_registry_inspects_the_model_and_refuses_to_compute_it():
    registry = ModelRegistry(REPO_ROOT / "models", ["tiny-diffusion"])
    registry.load_all()
    adapter = registry.get("tiny-diffusion")
    assert registry.inspected == {"tiny-diffusion"} and adapter.ready and adapter._pipeline is None
    assert adapter.pipeline_class == "StableDiffusionPipeline"
    assert isinstance(registry.task("tiny-diffusion"), TextToImage)
    with pytest.raises(JobsOnly) as refused:
        Predictor(registry).predict("tiny-diffusion", ["a cat"])
    assert refused.value.code == "jobs_only" and "POST /v1/jobs" in refused.value.message


def test_a_folder_without_a_pipeline_or_with_bad_options_fails_naming_the_model(tmp_path):
    folder = tmp_path / "drawer"
    folder.mkdir()
    manifest = {"task": "text-to-image", "adapter": "diffusers", "source": "pipeline"}
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        build_adapter(load_manifest(folder), folder).inspect()
    shutil.copytree(TINY / "pipeline", folder / "pipeline")
    (folder / "model.yaml").write_text(yaml.safe_dump({**manifest, "options": {"width": 100}}))
    with pytest.raises(ModelLoadError, match="width 100"):
        build_adapter(load_manifest(folder), folder).inspect()
    (folder / "model.yaml").write_text(yaml.safe_dump({**manifest, "options": {"device": "tpu"}}))
    with pytest.raises(ModelLoadError, match="device"):
        build_adapter(load_manifest(folder), folder).inspect()


def test_a_cuda_model_on_a_machine_without_cuda_fails_its_call_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.fail("this check needs a machine without CUDA (torch sees one here)")
    folder = tmp_path / "gpu-drawer"
    shutil.copytree(TINY, folder)
    manifest = yaml.safe_load((folder / "model.yaml").read_text())
    manifest["options"]["device"] = "cuda"
    (folder / "model.yaml").write_text(yaml.safe_dump(manifest))
    adapter = build_adapter(load_manifest(folder), folder)
    adapter.load()  # weights on the CPU: the device is chosen in the process that draws
    with pytest.raises(NotReady, match="torch sees no CUDA device"):
        adapter.predict([TextToImage(adapter).decode("a cat", None, Limits.defaults(), "x").value])


def test_a_web_process_never_imports_diffusers():
    import subprocess
    import sys

    probe = ("import sys; from predict import ModelRegistry; r = ModelRegistry('models', ['tiny-diffusion']); "
             "r.load_all(); print(sorted(m for m in sys.modules if m.split('.')[0] == 'diffusers'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
