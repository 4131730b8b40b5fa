"""The ``diffusers`` adapter: a Hugging Face diffusers text-to-image pipeline
(Stable Diffusion and its family) from a local folder.

Manifest::

    task: text-to-image
    adapter: diffusers
    source: pipeline           # a folder with model_index.json (save_pretrained's layout),
                               # or a hub id already in the local Hugging Face cache
    options:
      device: auto             # cpu, cuda, cuda:N, mps, or auto: cuda, else mps, else cpu
      dtype: auto              # float32, float16, bfloat16; auto: float16 on cuda, else float32
      num_steps: 20            # the defaults and bounds of a request (tasks.generation.GenerationOptions)
      width: 512
      height: 512
      min_size: 256
      max_size: 768

Only job workers load the weights (the task is ``jobs_only``); a web process
checks the folder (``inspect``) and imports nothing of diffusers. ``load`` reads
the weights on the CPU in the job worker's main process, before huey forks its
workers; each worker moves the pipeline to its device on its first image, so
CUDA is never initialised before a fork. Each denoising step is reported
(``adapters.progress``), and a reporter's :class:`~adapters.progress.Stopped`
ends the call between two steps. The seed drives a CPU generator, so a seed
gives the same image on every run of the same pipeline and device.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import ConfigDict, Field, ValidationError

from adapters.base import ModelAdapter, one_line
from adapters.progress import report
from serving.errors import ModelLoadError, NotReady
from tasks import TEXT_TO_IMAGE
from tasks.base import validation_details
from tasks.generation import GenerationOptions, ImageRequest

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
INDEX = "model_index.json"


class DiffusersOptions(GenerationOptions):
    """The adapter's options: where the pipeline runs, and the task's defaults and bounds."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field("auto", pattern=_DEVICE.pattern, description="cpu, cuda, cuda:N, mps or auto.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


def pick_device(asked: str) -> str:
    """The device of ``asked`` in this process (``auto``: cuda, else mps, else cpu)."""
    import torch

    if asked == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if asked.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {asked!r} was asked, but torch sees no CUDA device")
    return asked


class DiffusersPipeline(ModelAdapter):
    """Any diffusers text-to-image pipeline; one image per call of the pipeline."""

    task = TEXT_TO_IMAGE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = DiffusersOptions()
        self._pipeline: Any = None
        self._device: str | None = None  # set in the process that draws, on its first image
        self.pipeline_class = ""  # model_index.json's _class_name, once inspected
        self._lock = threading.Lock()

    @property
    def generation(self) -> GenerationOptions:
        """The defaults and bounds of a request (read by the task)."""
        return self.config

    def _options(self) -> DiffusersOptions:
        try:
            return DiffusersOptions.model_validate(self.options)
        except ValidationError as error:
            problems = "; ".join(f"{d['field']}: {d['message']}" for d in validation_details(error, "options"))
            raise ModelLoadError(self.name, problems) from None

    def _where(self) -> str:
        source = self.manifest.source or "pipeline"
        path = self.resolve(source)
        return str(path) if path.exists() or not _HUB_ID.match(source) else source

    def inspect(self) -> None:
        """The options and the pipeline's index, without reading weights (web processes)."""
        self.config = self._options()
        source = self.manifest.source or "pipeline"
        where = self._where()
        index = Path(where) / INDEX
        if not index.is_file() and where == source:  # a hub id: its files in the local cache
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, INDEX)
            if isinstance(cached, str):
                index = Path(cached)
        if not index.is_file():
            raise ModelLoadError(self.name, f"no {INDEX} in {source!r} (a folder, or a hub id in the local cache)")
        try:
            kind = json.loads(index.read_text(encoding="utf-8"))["_class_name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(self.name, f"{INDEX} is not a diffusers pipeline index: {one_line(exc, 120)}") from None
        self.pipeline_class = str(kind)

    def load(self) -> None:
        self.inspect()
        import torch
        import transformers
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        # Loading bars are for terminals; the log keeps one line per model.
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        try:
            # local_files_only: nothing is downloaded; low_cpu_mem_usage needs accelerate.
            pipeline = DiffusionPipeline.from_pretrained(
                self._where(), local_files_only=True, low_cpu_mem_usage=False, dtype=torch.float32
            )
        except Exception as exc:
            raise ModelLoadError(self.name, f"cannot load {self.manifest.source!r}: {one_line(exc, 200)}") from exc
        pipeline.set_progress_bar_config(disable=True)
        self._pipeline = pipeline

    def _placed(self) -> Any:
        if self._device is None:
            import torch

            try:
                device = pick_device(self.config.device)
            except RuntimeError as error:  # the job fails with this line, not a traceback
                raise NotReady(f"model {self.name!r} cannot run here: {error}") from None
            dtype = self.config.dtype
            if dtype == "auto":
                dtype = "float16" if device.startswith("cuda") else "float32"
            if dtype == "float32":  # as loaded
                self._pipeline.to(device)
            else:
                self._pipeline.to(device, getattr(torch, dtype))
            self._device = device
        return self._pipeline

    def predict(self, batch: Sequence[Any]) -> list[Any]:
        if self._pipeline is None:
            raise RuntimeError(f"model {self.name!r} is not loaded (a web process only inspects it)")
        with self._lock:
            pipeline = self._placed()
            return [self._draw(pipeline, request) for request in batch]

    def _draw(self, pipeline: Any, request: ImageRequest) -> Any:
        import torch

        total = request.num_steps

        def on_step(_pipeline: Any, step: int, _timestep: Any, tensors: dict) -> dict:
            report(min(step + 1, total), total)
            return tensors

        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        with torch.inference_mode():
            output = pipeline(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                num_inference_steps=total,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                generator=generator,
                output_type="pil",
                callback_on_step_end=on_step,
            )
        return output.images[0]

    def unload(self) -> None:
        self._pipeline = None
        self._device = None
        super().unload()
