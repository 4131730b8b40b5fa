"""The model layer: a registry of loaded models and the predict helpers.

Knows nothing of Flask or HTTP. From a Python shell::

    from predict import ModelRegistry, Predictor
    registry = ModelRegistry("models")
    registry.load_all()
    Predictor(registry).classify("sentiment", ["a warm, funny film"]).results
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from adapters.base import (
    IMAGE_CLASSIFICATION,
    OBJECT_DETECTION,
    TEXT_CLASSIFICATION,
    TEXT_EMBEDDING,
    Classification,
    Detection,
    ModelAdapter,
    ModelInfo,
)
from adapters.detection import DetectionOptions, postprocess
from adapters.manifest import ADAPTERS, MANIFEST_NAME, Manifest, load_manifest, verify_checksums
from serving.batching import BatchConfig, MicroBatcher, run_unbatched
from serving.cache import NullCache, PredictionCache
from serving.errors import ModelLoadError, ModelNotFound, NotReady, WrongTask
from serving.metrics import ModelMetrics
from utils_serve import DecodedImage, digest

log = logging.getLogger(__name__)

__all__ = ["ModelRegistry", "Predictor", "Predictions", "build_adapter", "load_manifest"]


def adapter_class(spec: str) -> type[ModelAdapter]:
    """The adapter class for a manifest's ``adapter``: a built-in name or ``module:Class``."""
    target = ADAPTERS.get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise ValueError(f"unknown adapter {spec!r}; built-in: {', '.join(sorted(ADAPTERS))}")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise ValueError(f"{target} is not a ModelAdapter")
    return cls


def build_adapter(manifest: Manifest, folder: Path | None = None) -> ModelAdapter:
    """An unloaded adapter for a manifest."""
    try:
        cls = adapter_class(manifest.adapter)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(manifest.name, f"adapter {manifest.adapter!r}: {exc}") from exc
    if cls.task != manifest.task:
        raise ModelLoadError(
            manifest.name, f"adapter {manifest.adapter!r} serves {cls.task!r}, manifest says {manifest.task!r}"
        )
    return cls(manifest, folder or Path("."))


@dataclass(frozen=True)
class LoadFailure:
    """An optional model that did not load: what it is and why, in one line."""

    info: ModelInfo
    reason: str


@dataclass(frozen=True)
class ModelState:
    """One model's readiness as ``/readyz`` reports it."""

    ready: bool
    optional: bool
    reason: str | None = None


def one_line(text: str) -> str:
    return " ".join(text.split())


class ModelRegistry:
    """The models of one repository folder, by name.

    A model that fails to load stops start-up with a one-line reason, unless
    its manifest says ``optional: true``: then it is recorded in ``failures``,
    listed as not ready, and every request for it is 503.
    """

    def __init__(self, repository: str | Path, names: Sequence[str] = ()) -> None:
        self.repository = Path(repository)
        self.names = list(names)
        self._models: dict[str, ModelAdapter] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.load_seconds: dict[str, float] = {}

    def discover(self) -> list[Path]:
        """Model folders to serve: every folder with a manifest, or the named ones."""
        if not self.repository.is_dir():
            raise ModelLoadError("*", f"model repository {self.repository} is not a folder")
        if self.names:
            folders = [self.repository / name for name in self.names]
            for folder in folders:
                if not (folder / MANIFEST_NAME).is_file():
                    raise ModelLoadError(folder.name, f"no {MANIFEST_NAME} in {folder}")
            return folders
        return sorted(p.parent for p in self.repository.glob(f"*/{MANIFEST_NAME}"))

    def load_all(self) -> None:
        """Load every model, dependencies first; the first failure stops start-up
        with a one-line reason naming the model."""
        manifests: dict[str, tuple[Manifest, Path]] = {}
        for folder in self.discover():
            manifest = load_manifest(folder)
            if manifest.name in manifests:
                raise ModelLoadError(manifest.name, f"two folders declare the name {manifest.name!r}")
            manifests[manifest.name] = (manifest, folder)
        for name in _dependency_order(manifests):
            manifest, folder = manifests[name]
            try:
                self._load(manifest, folder)
            except ModelLoadError as exc:
                if not manifest.optional:
                    raise
                self.failures[name] = LoadFailure(_manifest_info(manifest), one_line(exc.reason))
                log.warning("optional model %s not loaded: %s", name, self.failures[name].reason)

    def _load(self, manifest: Manifest, folder: Path) -> None:
        name = manifest.name
        missing = [dep for dep in manifest.depends_on if dep not in self._models]
        if missing:
            raise ModelLoadError(name, f"depends on {', '.join(missing)}, which did not load")
        verify_checksums(manifest, folder)
        adapter = build_adapter(manifest, folder)
        adapter.dependencies = {dep: self._models[dep] for dep in manifest.depends_on}
        started = time.perf_counter()
        try:
            adapter.load()
        except ModelLoadError:
            raise
        except Exception as exc:  # a broken artifact must name its model
            raise ModelLoadError(name, one_line(f"{type(exc).__name__}: {exc}")) from exc
        adapter.ready = True
        self.load_seconds[name] = time.perf_counter() - started
        self._models[name] = adapter
        log.info("loaded model %s (%s) in %.2fs", name, manifest.adapter, self.load_seconds[name])

    def add(self, adapter: ModelAdapter) -> None:
        """Register an adapter that is already loaded (tests, notebooks)."""
        adapter.ready = True
        self._models[adapter.name] = adapter

    def get(self, name: str) -> ModelAdapter:
        adapter = self._models.get(name)
        if adapter is None:
            if name in self.failures:
                raise NotReady(f"model {name!r} failed to load", details={"reason": self.failures[name].reason})
            raise ModelNotFound(f"no model named {name!r}", details={"available": sorted(self._models)})
        if not adapter.ready:
            raise NotReady(f"model {name!r} is not loaded")
        return adapter

    def __iter__(self):
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def infos(self) -> list[ModelInfo]:
        """Every model's card, the failed optional ones included (``ready: false``), by name."""
        cards = [m.info() for m in self._models.values()] + [f.info for f in self.failures.values()]
        return sorted(cards, key=lambda card: card.name)

    def info(self, name: str) -> ModelInfo:
        """One model's card, a failed optional one included."""
        if name in self.failures:
            return self.failures[name].info
        adapter = self._models.get(name)
        if adapter is None:
            raise ModelNotFound(f"no model named {name!r}", details={"available": sorted(self._models)})
        return adapter.info()

    def states(self) -> dict[str, ModelState]:
        """Readiness of every model, loaded or failed, by name."""
        states = {
            name: ModelState(ready=m.ready, optional=m.manifest.optional) for name, m in self._models.items()
        }
        for name, failure in self.failures.items():
            states[name] = ModelState(ready=False, optional=True, reason=failure.reason)
        return dict(sorted(states.items()))

    @property
    def ready(self) -> bool:
        """Every required model is loaded (and at least one model can answer)."""
        return bool(self._models) and all(m.ready for m in self._models.values() if not m.manifest.optional)


def _manifest_info(manifest: Manifest) -> ModelInfo:
    return ModelInfo(
        name=manifest.name,
        task=manifest.task,
        adapter=manifest.adapter,
        version=manifest.version,
        labels=list(manifest.labels),
        description=manifest.description,
        ready=False,
    )


def _dependency_order(manifests: dict[str, tuple[Manifest, Path]]) -> list[str]:
    """Model names so that every model comes after the models it depends on."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ModelLoadError(name, f"circular depends_on: {' -> '.join(chain + (name,))}")
        state[name] = "visiting"
        for dep in manifests[name][0].depends_on:
            if dep not in manifests:
                raise ModelLoadError(name, f"depends on {dep!r}, which is not served")
            visit(dep, chain + (name,))
        state[name] = "done"
        order.append(name)

    for name in sorted(manifests):
        visit(name, ())
    return order


@dataclass
class Predictions:
    """Results in input order, and how many came from the cache."""

    results: list[Any]
    cached: int = 0


class Predictor:
    """Runs inputs through a model with the prediction cache in front of it.

    Each input is cached on its own, keyed by the model's name and version, the
    digest of the decoded input and the options, so a batch that repeats an
    earlier input computes only what is new.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: PredictionCache | None = None,
        batching: bool = True,
        timeout: float = 20.0,
    ) -> None:
        self.registry = registry
        self.cache = cache or NullCache()
        self.batching = batching
        self.timeout = timeout
        self._runners: dict[str, Callable[..., list[Any]]] = {}
        self._metrics: dict[str, ModelMetrics] = {}
        self._lock = threading.Lock()

    def runner(self, adapter: ModelAdapter) -> Callable[..., list[Any]]:
        """How inputs reach the model: through its micro-batcher, or directly."""
        run = self._runners.get(adapter.name)
        if run is None:
            with self._lock:
                run = self._runners.get(adapter.name)
                if run is None:
                    observer = self.metrics(adapter.name)
                    if self.batching:
                        spec = adapter.manifest.batching
                        config = BatchConfig(
                            max_batch_size=spec.max_batch_size,
                            max_wait_ms=spec.max_wait_ms,
                            max_queue=spec.max_queue,
                            max_queue_wait_ms=spec.max_queue_wait_ms,
                            timeout_ms=self.timeout * 1000,
                        )
                        run = MicroBatcher(adapter.predict, config, adapter.name, observer).submit
                    else:
                        run = run_unbatched(adapter.predict, observer)
                    self._runners[adapter.name] = run
        return run

    def metrics(self, name: str) -> ModelMetrics:
        found = self._metrics.get(name)
        if found is None:
            found = self._metrics.setdefault(name, ModelMetrics(name))
        return found

    def batcher(self, name: str) -> MicroBatcher | None:
        run = self._runners.get(name)
        return getattr(run, "__self__", None)

    def model(self, name: str, task: str) -> ModelAdapter:
        adapter = self.registry.get(name)
        if adapter.task != task:
            raise WrongTask(f"model {name!r} does {adapter.task}, not {task}")
        return adapter

    def classify(self, name: str, texts: Sequence[str]) -> Predictions:
        return self._run_texts(name, TEXT_CLASSIFICATION, texts, dump=asdict, load=lambda value: Classification(**value))

    def embed(self, name: str, texts: Sequence[str]) -> Predictions:
        return self._run_texts(
            name, TEXT_EMBEDDING, texts, dump=lambda vector: [float(x) for x in vector], load=lambda value: value
        )

    def _run_texts(
        self, name: str, task: str, texts: Sequence[str], dump: Callable[[Any], Any], load: Callable[[Any], Any]
    ) -> Predictions:
        adapter = self.model(name, task)
        return self._run(
            adapter,
            list(texts),
            keys=[digest(text) for text in texts],
            options="",
            compute=self.runner(adapter),
            dump=dump,
            load=load,
        )

    def classify_images(self, name: str, images: Sequence[DecodedImage]) -> Predictions:
        adapter = self.model(name, IMAGE_CLASSIFICATION)
        run = self.runner(adapter)
        return self._run(
            adapter,
            list(images),
            keys=[item.digest for item in images],
            options="",
            compute=lambda batch: run([item.image for item in batch]),
            dump=asdict,
            load=lambda value: Classification(**value),
        )

    def detect(
        self, name: str, images: Sequence[DecodedImage], options: DetectionOptions, cached: bool = True
    ) -> Predictions:
        """Objects per image; ``cached=False`` neither reads nor writes the cache
        (video frames never repeat, so caching them only costs writes)."""
        adapter = self.model(name, OBJECT_DETECTION)

        run = self.runner(adapter)

        def compute(batch: list[DecodedImage]) -> list[list[Detection]]:
            raw = run([item.image for item in batch])
            return [postprocess(dets, item.width, item.height, options) for dets, item in zip(raw, batch)]

        return self._run(
            adapter,
            list(images),
            keys=[item.digest for item in images],
            options=json.dumps(asdict(options), sort_keys=True),
            compute=compute,
            dump=lambda dets: [asdict(d) for d in dets],
            load=lambda value: [Detection(**d) for d in value],
            cached=cached,
        )

    def _run(
        self,
        adapter: ModelAdapter,
        inputs: list[Any],
        keys: list[str],
        options: str,
        compute: Callable[[list[Any]], list[Any]],
        dump: Callable[[Any], Any],
        load: Callable[[Any], Any],
        cached: bool = True,
    ) -> Predictions:
        if not cached:
            return Predictions(results=list(compute(inputs)), cached=0)
        cache_keys = [digest(adapter.name, adapter.manifest.version, key, options) for key in keys]
        results: list[Any] = [None] * len(inputs)
        missing: list[int] = []
        for i, key in enumerate(cache_keys):
            hit = self._cache_get(key)
            if hit is None:
                missing.append(i)
            else:
                results[i] = load(hit)
        if missing:
            computed = compute([inputs[i] for i in missing])
            for i, result in zip(missing, computed):
                results[i] = result
                self._cache_set(cache_keys[i], dump(result))
        if not isinstance(self.cache, NullCache):
            self.metrics(adapter.name).cache(hits=len(inputs) - len(missing), misses=len(missing))
        return Predictions(results=results, cached=len(inputs) - len(missing))

    # A cache that fails (full disk, locked database) costs speed, never an answer.
    def _cache_get(self, key: str) -> Any | None:
        try:
            return self.cache.get(key)
        except Exception:
            log.warning("prediction cache read failed", exc_info=True)
            return None

    def _cache_set(self, key: str, value: Any) -> None:
        try:
            self.cache.set(key, value)
        except Exception:
            log.warning("prediction cache write failed", exc_info=True)
