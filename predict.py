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
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pydantic import BaseModel

from adapters.base import ModelAdapter, ModelInfo, one_line
from adapters.loading import adapter_class
from adapters.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_checksums
from serving.batching import BatchConfig, MicroBatcher, run_unbatched
from serving import tracing
from serving.cache import NullCache, PredictionCache
from serving.errors import Conflict, JobsOnly, ModelLoadError, ModelNotFound, NotReady, WrongTask
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

    def __init__(self, repository: str | Path, names: Sequence[str] = (), *, runs_jobs: bool = False) -> None:
        self.repository = Path(repository)
        self.names = list(names)
        # A job worker's registry loads the weights of jobs-only models (text to
        # image); any other only inspects them and lists them in ``inspected``.
        self.runs_jobs = runs_jobs
        self.inspected: set[str] = set()
        self._models: dict[str, ModelAdapter] = {}
        self._tasks: dict[str, Task] = {}
        self._folders: dict[str, Path] = {}
        self.failures: dict[str, LoadFailure] = {}
        self.unloaded: set[str] = set()
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

    def manifests(self) -> dict[str, tuple[Manifest, Path]]:
        """The manifest and folder of every model to serve, by name."""
        manifests: dict[str, tuple[Manifest, Path]] = {}
        for folder in self.discover():
            manifest = load_manifest(folder)
            if manifest.name in manifests:
                raise ModelLoadError(manifest.name, f"two folders declare the name {manifest.name!r}")
            manifests[manifest.name] = (manifest, folder)
        return manifests

    def load_all(self) -> None:
        """Load every model, dependencies first; the first failure stops start-up
        with a one-line reason naming the model."""
        manifests = self.manifests()
        self._folders.update({name: folder for name, (_, folder) in manifests.items()})
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
        revision = folder_revision(folder)
        verify_checksums(manifest, folder)
        adapter = build_adapter(manifest, folder)
        adapter.revision = revision
        adapter.dependencies = {dep: self._models[dep] for dep in manifest.depends_on}
        inspect_only = not self.runs_jobs and task_class(manifest, type(adapter), folder).jobs_only
        started = time.perf_counter()
        try:
            adapter.inspect() if inspect_only else adapter.load()
        except ModelLoadError:
            raise
        except Exception as exc:  # a broken artifact must name its model
            raise ModelLoadError(name, one_line(f"{type(exc).__name__}: {exc}")) from exc
        self._bind(adapter)
        self.load_seconds[name] = time.perf_counter() - started
        if inspect_only:
            self.inspected.add(name)
            log.info("model %s (%s) runs in job workers only: inspected, not loaded", name, manifest.adapter)
            return
        self.inspected.discard(name)
        log.info("loaded model %s (%s) in %.2fs", name, manifest.adapter, self.load_seconds[name])

    def _bind(self, adapter: ModelAdapter) -> None:
        cls = task_class(adapter.manifest, type(adapter), adapter.folder)
        task = build_task(cls, adapter)
        wrap = getattr(adapter, "wrap_task", None)  # an ensemble serves its members' task, marked
        self._tasks[adapter.name] = wrap(task) if wrap is not None else task
        adapter.ready = True
        self._models[adapter.name] = adapter

    def add(self, adapter: ModelAdapter) -> None:
        """Register an adapter that is already loaded (tests, notebooks)."""
        self._bind(adapter)

    # --- live changes (the V2 repository extension, SIGHUP) ------------------

    def reload(self, name: str) -> list[str]:
        """Load the folder of ``name`` anew (a new version, or a folder added
        since start-up) and serve it; the models that depend on it are rebuilt
        on the new one. Everything is loaded before anything is replaced: a
        failure (``ModelLoadError``) leaves the models served as they were.
        Returns the names now served from fresh loads."""
        folder = self._folders.get(name, self.repository / name)
        if not (folder / MANIFEST_NAME).is_file():
            raise ModelNotFound(f"no model folder for {name!r} in {self.repository}")
        manifest = load_manifest(folder)
        if manifest.name != name:
            raise ModelLoadError(name, f"{folder} declares the name {manifest.name!r}")
        manifests = {n: (self._models[n].manifest, self._models[n].folder) for n in self._models}
        manifests[name] = (manifest, folder)
        order = [n for n in _dependency_order(manifests) if n == name or name in _requires(n, manifests)]
        staged = ModelRegistry(self.repository, runs_jobs=self.runs_jobs)
        staged._models = {n: m for n, m in self._models.items() if n not in order}
        for model in order:
            fresh = manifest if model == name else load_manifest(manifests[model][1])
            staged._load(fresh, manifests[model][1])
        for model in order:
            self._models[model], self._tasks[model] = staged._models[model], staged._tasks[model]
            if model in staged.inspected:
                self.inspected.add(model)
            else:
                self.inspected.discard(model)
            self.load_seconds[model] = staged.load_seconds[model]
            self._folders[model] = manifests[model][1]
            self.failures.pop(model, None)
            self.unloaded.discard(model)
        log.info("reloaded %s", ", ".join(order))
        return order

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (it stays unloaded until loaded again);
        ``Conflict`` while a served model depends on it."""
        if name not in self._models and name not in self.failures:
            raise ModelNotFound(f"no model named {name!r} is loaded")
        users = sorted(n for n, m in self._models.items() if name in m.manifest.depends_on)
        if users:
            raise Conflict(f"model {name!r} is used by {', '.join(users)}; unload those first", details={"used_by": users})
        self._models.pop(name, None)
        self._tasks.pop(name, None)
        self.failures.pop(name, None)
        self.load_seconds.pop(name, None)
        self.unloaded.add(name)
        log.info("unloaded %s", name)

    def refresh(self) -> dict[str, str]:
        """Bring the served models in line with the repository (an operator's
        SIGHUP): load new folders and folders whose files changed, unload models
        whose folder is gone. Explicitly unloaded models stay unloaded. What
        happened to each model, by name; a failure leaves that model as it was."""
        report: dict[str, str] = {}
        try:
            found = self.manifests()
        except ModelLoadError as exc:
            return {exc.model: f"failed: {one_line(exc.reason)}"}
        try:
            order = _dependency_order(found)
        except ModelLoadError as exc:  # a folder depends on a model no folder has
            return {exc.model: f"failed: {one_line(exc.reason)}"}
        for name in order:
            if name in self.unloaded or name in report:
                continue
            current = self._models.get(name)
            if current is not None and current.revision == folder_revision(found[name][1]):
                continue
            self._folders[name] = found[name][1]
            try:
                for model in self.reload(name):
                    report[model] = "loaded"
            except ModelLoadError as exc:
                report[name] = f"failed: {one_line(exc.reason)}"
        for name in sorted(set(self._models) - set(found)):
            try:
                self.unload(name)
                self.unloaded.discard(name)  # its folder is gone, not a choice to keep
                report[name] = "unloaded"
            except Conflict as exc:
                report[name] = f"failed: {exc.message}"
        return report

    def index(self) -> list[dict[str, Any]]:
        """Every model of the repository: served (READY) or not (UNAVAILABLE, with why)."""
        entries = []
        for name in sorted(set(self._folders) | set(self._models) | set(self.failures)):
            adapter = self._models.get(name)
            if adapter is not None:
                entries.append({"name": name, "version": adapter.manifest.version, "state": "READY", "reason": ""})
                continue
            failure = self.failures.get(name)
            version = failure.info.version if failure else ""
            reason = failure.reason if failure else ("unloaded" if name in self.unloaded else "not loaded")
            entries.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        return entries

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


def folder_revision(folder: Path) -> str:
    """What identifies the contents of a model folder: each file's name, size
    and modification time. Part of every cache key, so a model reloaded with
    new files never answers from its old version's cache entries."""
    parts = [
        f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}"
        for path in sorted(folder.rglob("*"))
        if "__pycache__" not in path.parts and path.is_file() and (stat := path.stat())
    ]
    return digest(*parts)[:16]


def dependency_closure(repository: str | Path, name: str) -> set[str]:
    """Every model that model ``name`` of ``repository`` needs loaded, through any depth."""
    return _requires(name, ModelRegistry(repository).manifests())


def _requires(name: str, manifests: dict[str, tuple[Manifest, Path]]) -> set[str]:
    """Every model ``name`` depends on, directly or through others."""
    found: set[str] = set()
    stack = list(manifests[name][0].depends_on)
    while stack:
        dep = stack.pop()
        if dep not in found:
            found.add(dep)
            stack.extend(manifests[dep][0].depends_on if dep in manifests else ())
    return found


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


def _jobs_only(name: str, *_: Any) -> list[Any]:
    raise JobsOnly(
        f"model {name!r} runs only as a background job: POST /v1/jobs with {{\"model\": \"{name}\", \"inputs\": [...]}}",
        details={"model": name, "submit": "/v1/jobs"},
    )


@dataclass(frozen=True)
class _Route:
    """How one model's inputs reach it: its runner and which per-item hooks apply."""

    model: ModelAdapter
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
        with tracing.span("decode", {"serve.model": name, "serve.inputs": len(items)}):
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

    def run(self, inputs: ModelInputs, *, cached: bool = True, timeout: float | None = None) -> Predictions:
        """Results for decoded inputs; ``cached=False`` neither reads nor writes
        the cache (video frames never repeat, so caching them only costs writes).
        ``timeout``: seconds the inputs may wait for the model (default: the predictor's)."""
        adapter, task, items, parameters = inputs.model, inputs.task, inputs.items, inputs.parameters
        route = self._route(adapter, task)
        if not cached:
            return Predictions(self._compute(route, items, parameters, timeout), inputs, 0)
        options = task.cache_options(parameters)
        version = f"{adapter.manifest.version}:{adapter.revision}"
        keys = [digest(adapter.name, version, item.key, options) for item in items]
        results: list[Any] = [None] * len(items)
        missing: list[int] = []
        with tracing.span("cache lookup", {"serve.model": adapter.name, "serve.inputs": len(items)}) as span:
            for i, key in enumerate(keys):
                hit = self._cache_get(key)
                if hit is None:
                    missing.append(i)
                else:
                    results[i] = task.load(hit)
            if span is not None:
                span.set_attributes({"serve.cache.hits": len(items) - len(missing), "serve.cache.misses": len(missing)})
        if missing:
            computed = self._compute(route, [items[i] for i in missing], parameters, timeout)
            for i, result in zip(missing, computed):
                results[i] = result
                if task.cacheable(result):
                    self._cache_set(keys[i], task.dump(result))
        if not isinstance(self.cache, NullCache):
            self.metrics(adapter.name).cache(hits=len(items) - len(missing), misses=len(missing))
        return Predictions(results, inputs, len(items) - len(missing))

    @staticmethod
    def _compute(route: _Route, items: list[Decoded], parameters: BaseModel, timeout: float | None = None) -> list[Any]:
        values = [item.value for item in items]
        if route.preprocess is not None:
            values = [route.preprocess(value) for value in values]
        results = route.run(values, timeout)
        if route.postprocess is not None:
            results = [route.postprocess(result) for result in results]
        if route.finish is not None:
            results = [route.finish(result, item, parameters) for result, item in zip(results, items)]
        return results

    def _route(self, adapter: ModelAdapter, task: Task) -> _Route:
        route = self._routes.get(adapter.name)
        if route is None or route.model is not adapter:
            with self._lock:
                route = self._routes.get(adapter.name)
                if route is None or route.model is not adapter:  # new, or reloaded in this process
                    old, route = route, self._build_route(adapter, task)
                    self._routes[adapter.name] = route
                    batcher = getattr(old.run, "__self__", None) if old is not None else None
                    if batcher is not None:
                        batcher.close(timeout=0)  # its queued work still runs, on the old model
        return route

    def _build_route(self, adapter: ModelAdapter, task: Task) -> _Route:
        def hook(owner: Any, base: type, method: str) -> Callable[..., Any] | None:
            # Only hooks a class overrides cost a call per item.
            return getattr(owner, method) if getattr(type(owner), method) is not getattr(base, method) else None

        observer = self.metrics(adapter.name)
        fan_out = getattr(adapter, "fan_out", None)
        if task.jobs_only and adapter.name in self.registry.inspected:
            run = partial(_jobs_only, adapter.name)
        elif fan_out is not None:  # an ensemble: never batched itself, its members batch on their own
            run = run_unbatched(partial(fan_out, self.call_member, self.timeout), observer, adapter.name)
        elif self.batching:
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
            run = run_unbatched(adapter.predict, observer, adapter.name)
        return _Route(
            model=adapter,
            run=run,
            preprocess=hook(adapter, ModelAdapter, "preprocess"),
            postprocess=hook(adapter, ModelAdapter, "postprocess"),
            finish=hook(task, Task, "finish"),
        )

    def call_member(self, name: str, items: list[Any], deadline: float) -> list[Any]:
        """An ensemble's local member: its JSON answers to the ensemble's inputs
        (``tasks.ensemble.MemberInput``), through its own route (batching, cache)."""
        adapter, task = self.model(name)
        parameters = task.parameters(items[0].parameters.model_dump(exclude_defaults=True) if items else None)
        inputs = ModelInputs(adapter, task, [item.decoded for item in items], parameters)
        return self.run(inputs, timeout=max(0.001, deadline - time.monotonic())).outputs()

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
