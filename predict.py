"""The model layer: a registry of loaded models and the one predict path.

Knows nothing of Flask or HTTP. From a Python shell::

    from predict import ModelRegistry, Predictor
    registry = ModelRegistry("models")
    registry.load_all()
    Predictor(registry).predict("sentiment", ["a warm, funny film"]).outputs()
    Predictor(registry).predict("iris", [{"sepal length (cm)": 5.1, ...}]).results

Every caller (the routes, the jobs worker, the stream) goes through
``Predictor.predict`` (or its two halves, ``decode`` and ``run``): the model's
task decodes each input, the prediction cache answers what it can, the
micro-batcher runs the rest, and the task shapes the results.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel

from adapters.base import ModelAdapter, ModelInfo, one_line
from adapters.loading import adapter_class
from adapters.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_checksums
from serving.batching import BatchConfig, MicroBatcher, run_unbatched
from serving.cache import NullCache, PredictionCache
from serving.errors import ModelLoadError, ModelNotFound, NotReady, WrongTask
from serving.metrics import ModelMetrics
from tasks import Decoded, Limits, Task, build_task, task_class
from utils_serve import digest

log = logging.getLogger(__name__)

__all__ = ["ModelInputs", "ModelRegistry", "Predictor", "Predictions", "build_adapter", "load_manifest"]


def build_adapter(manifest: Manifest, folder: Path | None = None) -> ModelAdapter:
    """An unloaded adapter for a manifest, after checking it can serve the manifest's task."""
    folder = folder or Path(".")
    cls = adapter_class(manifest.adapter, folder, manifest.name)
    task_class(manifest, cls, folder)  # before any weights are read
    return cls(manifest, folder)


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
        self._tasks: dict[str, Task] = {}
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
        self._bind(adapter)
        self.load_seconds[name] = time.perf_counter() - started
        log.info("loaded model %s (%s) in %.2fs", name, manifest.adapter, self.load_seconds[name])

    def _bind(self, adapter: ModelAdapter) -> None:
        cls = task_class(adapter.manifest, type(adapter), adapter.folder)
        self._tasks[adapter.name] = build_task(cls, adapter)
        adapter.ready = True
        self._models[adapter.name] = adapter

    def add(self, adapter: ModelAdapter) -> None:
        """Register an adapter that is already loaded (tests, notebooks)."""
        self._bind(adapter)

    def get(self, name: str) -> ModelAdapter:
        adapter = self._models.get(name)
        if adapter is None:
            if name in self.failures:
                raise NotReady(f"model {name!r} failed to load", details={"reason": self.failures[name].reason})
            raise ModelNotFound(f"no model named {name!r}", details={"available": sorted(self._models)})
        if not adapter.ready:
            raise NotReady(f"model {name!r} is not loaded")
        return adapter

    def task(self, name: str) -> Task:
        """The task of a loaded model: what its inputs and outputs are."""
        self.get(name)
        return self._tasks[name]

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


@dataclass(frozen=True)
class ModelInputs:
    """Decoded inputs of one model with the request's parameters: what ``run`` takes."""

    model: ModelAdapter
    task: Task
    items: list[Decoded]
    parameters: BaseModel

    def with_parameters(self, raw: BaseModel | Mapping[str, Any] | None, field: str = "parameters") -> "ModelInputs":
        """The same inputs under other parameters (one image, several detection options)."""
        return replace(self, parameters=self.task.parameters(raw, field))


@dataclass
class Predictions:
    """Results in input order, how many came from the cache, and what they answer."""

    results: list[Any]
    inputs: ModelInputs
    cached: int = 0

    def outputs(self) -> list[Any]:
        """Each result as JSON-ready data, shaped by the model's task."""
        task, parameters = self.inputs.task, self.inputs.parameters
        return [task.encode(r, d, parameters) for r, d in zip(self.results, self.inputs.items)]


@dataclass(frozen=True)
class _Route:
    """How one model's inputs reach it: its runner and which per-item hooks apply."""

    run: Callable[..., list[Any]]
    preprocess: Callable[[Any], Any] | None
    postprocess: Callable[[Any], Any] | None
    finish: Callable[..., Any] | None


class Predictor:
    """The one predict path: decode, cache, batch, finish, encode.

    Each input is cached on its own, keyed by the model's name and version, the
    task's key of the decoded input and the parameters that change the result,
    so a batch that repeats an earlier input computes only what is new.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache: PredictionCache | None = None,
        batching: bool = True,
        timeout: float = 20.0,
        limits: Limits | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache or NullCache()
        self.batching = batching
        self.timeout = timeout
        self.limits = limits or Limits.defaults()
        self._routes: dict[str, _Route] = {}
        self._metrics: dict[str, ModelMetrics] = {}
        self._lock = threading.Lock()

    def model(self, name: str, task: str | None = None) -> tuple[ModelAdapter, Task]:
        """A loaded model and its task; ``task`` asks for that task (else 422 ``wrong_task``)."""
        adapter = self.registry.get(name)
        found = self.registry.task(name)
        if task is not None and found.name != task:
            raise WrongTask(f"model {name!r} does {found.name}, not {task}")
        return adapter, found

    def decode(
        self,
        name: str,
        items: Sequence[Any],
        parameters: BaseModel | Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        field: str = "inputs[{i}]",
    ) -> ModelInputs:
        """Validate the parameters, then decode every input: one bad input fails
        the request before any compute. ``field`` names input ``i`` in errors."""
        adapter, found = self.model(name, task)
        params = found.parameters(parameters)
        limits = self.limits
        decoded = [found.decode(item, params, limits, field.format(i=i)) for i, item in enumerate(items)]
        return ModelInputs(adapter, found, decoded, params)

    def predict(
        self,
        name: str,
        items: Sequence[Any],
        parameters: BaseModel | Mapping[str, Any] | None = None,
        *,
        task: str | None = None,
        field: str = "inputs[{i}]",
        cached: bool = True,
    ) -> Predictions:
        """Results for wire inputs of a model (``outputs()`` gives their JSON)."""
        return self.run(self.decode(name, items, parameters, task=task, field=field), cached=cached)

    def run(self, inputs: ModelInputs, *, cached: bool = True) -> Predictions:
        """Results for decoded inputs; ``cached=False`` neither reads nor writes
        the cache (video frames never repeat, so caching them only costs writes)."""
        adapter, task, items, parameters = inputs.model, inputs.task, inputs.items, inputs.parameters
        route = self._route(adapter, task)
        if not cached:
            return Predictions(self._compute(route, items, parameters), inputs, 0)
        options = task.cache_options(parameters)
        version = adapter.manifest.version
        keys = [digest(adapter.name, version, item.key, options) for item in items]
        results: list[Any] = [None] * len(items)
        missing: list[int] = []
        for i, key in enumerate(keys):
            hit = self._cache_get(key)
            if hit is None:
                missing.append(i)
            else:
                results[i] = task.load(hit)
        if missing:
            computed = self._compute(route, [items[i] for i in missing], parameters)
            for i, result in zip(missing, computed):
                results[i] = result
                self._cache_set(keys[i], task.dump(result))
        if not isinstance(self.cache, NullCache):
            self.metrics(adapter.name).cache(hits=len(items) - len(missing), misses=len(missing))
        return Predictions(results, inputs, len(items) - len(missing))

    @staticmethod
    def _compute(route: _Route, items: list[Decoded], parameters: BaseModel) -> list[Any]:
        values = [item.value for item in items]
        if route.preprocess is not None:
            values = [route.preprocess(value) for value in values]
        results = route.run(values)
        if route.postprocess is not None:
            results = [route.postprocess(result) for result in results]
        if route.finish is not None:
            results = [route.finish(result, item, parameters) for result, item in zip(results, items)]
        return results

    def _route(self, adapter: ModelAdapter, task: Task) -> _Route:
        route = self._routes.get(adapter.name)
        if route is None:
            with self._lock:
                route = self._routes.get(adapter.name)
                if route is None:
                    route = self._routes[adapter.name] = self._build_route(adapter, task)
        return route

    def _build_route(self, adapter: ModelAdapter, task: Task) -> _Route:
        def hook(owner: Any, base: type, method: str) -> Callable[..., Any] | None:
            # Only hooks a class overrides cost a call per item.
            return getattr(owner, method) if getattr(type(owner), method) is not getattr(base, method) else None

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
        return _Route(
            run=run,
            preprocess=hook(adapter, ModelAdapter, "preprocess"),
            postprocess=hook(adapter, ModelAdapter, "postprocess"),
            finish=hook(task, Task, "finish"),
        )

    def metrics(self, name: str) -> ModelMetrics:
        found = self._metrics.get(name)
        if found is None:
            found = self._metrics.setdefault(name, ModelMetrics(name))
        return found

    def batcher(self, name: str) -> MicroBatcher | None:
        route = self._routes.get(name)
        return getattr(route.run, "__self__", None) if route is not None else None

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
