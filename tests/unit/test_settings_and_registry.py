"""Settings, manifests and the registry."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from adapters.manifest import load_manifest
from predict import ModelRegistry, Predictor
from serving.cache import DiskCache, MemoryCache
from serving.errors import ModelLoadError, ModelNotFound, WrongTask
from serving.settings import Settings


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("SERVE_MODELS", "faces, sentiment")
    monkeypatch.setenv("SERVE_IMAGE_FORMATS", "jpeg,png")
    monkeypatch.setenv("SERVE_API_KEYS", "a,b")
    s = Settings(_env_file=None)
    assert (s.port, s.workers, s.models, s.image_formats, s.api_keys) == (9123, 3, ["faces", "sentiment"], ["JPEG", "PNG"], ["a", "b"])


def test_settings_from_dotenv(tmp_path, monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    (tmp_path / ".env").write_text("PORT=7001\nSERVE_MAX_TEXT_CHARS=5\n")
    s = Settings(_env_file=tmp_path / ".env")
    assert (s.port, s.max_text_chars) == (7001, 5)


def test_torch_threads_never_exceed_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert Settings(_env_file=None, workers=5).torch_threads_per_worker() == 1
    assert Settings(_env_file=None, workers=1).torch_threads_per_worker() == 2
    assert Settings(_env_file=None, workers=1, torch_threads=1).torch_threads_per_worker() == 1


def test_invalid_setting_is_refused(monkeypatch):
    monkeypatch.setenv("SERVE_CACHE_BACKEND", "floppy")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def write_manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(text)
    return folder


def test_manifest_defaults_name_to_folder(tmp_path):
    m = load_manifest(write_manifest(tmp_path / "my-model", "task: text-classification\nadapter: sklearn\nversion: 3\n"))
    assert (m.name, m.version) == ("my-model", "3")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("task: [", "cannot read"),
        ("- a list", "must be a mapping"),
        ("task: text-classification\n", "adapter"),
        ("task: text-classification\nadapter: sklearn\nsurprise: 1\n", "surprise"),
    ],
)
def test_bad_manifest_names_the_model(tmp_path, text, reason):
    with pytest.raises(ModelLoadError) as info:
        load_manifest(write_manifest(tmp_path / "broken", text))
    assert info.value.model == "broken"
    assert reason in str(info.value)


def test_registry_reports_the_failing_model(tmp_path):
    write_manifest(tmp_path / "ghost", "task: text-classification\nadapter: sklearn\nsource: missing.joblib\n")
    with pytest.raises(ModelLoadError) as info:
        ModelRegistry(tmp_path).load_all()
    assert info.value.model == "ghost"
    write_manifest(tmp_path / "odd", "task: text-classification\nadapter: haar-cascade\n")
    with pytest.raises(ModelLoadError, match="serves object-detection, manifest says 'text-classification'"):
        ModelRegistry(tmp_path, ["odd"]).load_all()
    with pytest.raises(ModelLoadError, match="nosuch"):
        ModelRegistry(tmp_path, ["nosuch"]).load_all()
    write_manifest(tmp_path / "custom", "task: text-classification\nadapter: not.a.module:Thing\n")
    with pytest.raises(ModelLoadError, match="adapter 'not.a.module:Thing'"):
        ModelRegistry(tmp_path, ["custom"]).load_all()


def test_registry_and_predictor_from_a_shell(registry):
    predictor = Predictor(registry, MemoryCache(10))
    out = predictor.predict("sentiment", ["a warm, funny, beautifully acted film"])
    assert out.results[0].label == "fresh" and out.cached == 0
    assert out.outputs()[0]["category"] == "fresh"
    again = predictor.predict("sentiment", ["a warm, funny, beautifully acted film"])
    assert again.cached == 1 and again.outputs() == out.outputs()
    with pytest.raises(ModelNotFound):
        predictor.predict("nope", ["x"])
    with pytest.raises(WrongTask):
        predictor.predict("faces", ["x"], task="text-classification")


def test_caches_bound_their_size(tmp_path):
    memory = MemoryCache(2)
    for key in "abc":
        memory.set(key, {"v": key})
    assert memory.get("a") is None and memory.get("c") == {"v": "c"}
    disk = DiskCache(tmp_path / "c", max_bytes=200_000)
    blobs = [secrets.token_hex(1000) for _ in range(400)]  # incompressible: JSONDisk zips values
    for i, blob in enumerate(blobs):
        disk.set(f"k{i}", {"blob": blob, "i": i})
    assert disk.get("k399") == {"blob": blobs[399], "i": 399}
    assert disk.get("k0") is None  # evicted to respect the bound
    assert disk.clear() > 0 and disk.get("k399") is None


def test_a_disk_cache_pruned_on_a_schedule_evicts_nothing_on_writes(tmp_path):
    bound = 400_000
    disk = DiskCache(tmp_path / "c", max_bytes=bound, cull_on_write=False)
    blobs = [secrets.token_hex(1000) for _ in range(300)]  # about 600 kB: past the bound, under twice it
    for i, blob in enumerate(blobs):
        disk.set(f"k{i}", {"blob": blob})
    assert disk.get("k0") == {"blob": blobs[0]}  # nothing evicted by the writes
    assert disk.volume() > bound
    assert disk.prune() > 0  # what the job worker's scheduled task calls
    assert disk.volume() <= bound and disk.get("k299") == {"blob": blobs[299]}
    # No job worker pruning: a folder past twice its bound is trimmed by a write.
    for i in range(600):
        disk.set(f"more{i}", {"blob": secrets.token_hex(1000)})
    assert disk.volume() <= 2 * bound + 64 * 2100


def test_broken_cache_never_fails_a_prediction(registry):
    class Broken:
        def get(self, key):
            raise OSError("disk gone")

        def set(self, key, value):
            raise OSError("disk gone")

        def clear(self):
            return 0

    out = Predictor(registry, Broken()).predict("sentiment", ["fine film"])
    assert out.results[0].label in {"fresh", "rotten", "plot"}


def test_dependencies_load_first_and_are_shared(tmp_path, monkeypatch):
    loaded = []

    from adapters.base import ModelAdapter

    class Probe(ModelAdapter):
        task = "text-classification"

        def load(self):
            loaded.append((self.name, sorted(self.dependencies)))
            for dep in self.dependencies.values():
                assert dep.ready

        def predict(self, batch):
            return []

    monkeypatch.setitem(__import__("adapters.loading").loading.ADAPTERS, "probe", f"{__name__}:Probe")
    globals()["Probe"] = Probe
    write_manifest(tmp_path / "a-head", "task: text-classification\nadapter: probe\ndepends_on: [z-encoder]\n")
    write_manifest(tmp_path / "z-encoder", "task: text-classification\nadapter: probe\n")
    registry = ModelRegistry(tmp_path)
    registry.load_all()
    assert loaded == [("z-encoder", []), ("a-head", ["z-encoder"])]
    assert registry.get("a-head").dependencies["z-encoder"] is registry.get("z-encoder")

    write_manifest(tmp_path / "loop", "task: text-classification\nadapter: probe\ndepends_on: [loop]\n")
    with pytest.raises(ModelLoadError, match="circular"):
        ModelRegistry(tmp_path).load_all()
    write_manifest(tmp_path / "orphan", "task: text-classification\nadapter: probe\ndepends_on: [ghost]\n")
    with pytest.raises(ModelLoadError, match="ghost"):
        ModelRegistry(tmp_path, ["orphan"]).load_all()
