"""Text to image: a prompt (and how to draw it) -> a PNG.

One input is a prompt, or an object with the prompt and what a diffusion
pipeline takes beside it: ``negative_prompt``, ``num_steps`` (1..50),
``guidance_scale``, ``seed``, ``width`` and ``height``. What is left out comes
from the model's manifest (``GenerationOptions``); a missing seed is drawn at
random and reported with the image, so every image can be made again.

Generating takes seconds to minutes, so this task runs only as a background
job (``jobs_only``): a job worker computes it, reports each denoising step as
the job's progress and stores the image as the job's file; the result line
says what was drawn and names that file.
"""

from __future__ import annotations

import io
import secrets
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, model_validator

from serving.errors import invalid
from tasks.base import Decoded, Limits, Strict, Task, canonical_json, integral, schema_error
from tasks.text import Text, check_text

MAX_STEPS = 50
MAX_SEED = 2**32 - 1
EXAMPLE_PROMPT = "a sunset over a beach"


class GenerationOptions(BaseModel):
    """What a text-to-image manifest's ``options`` say of the images: the
    defaults of a request and the sizes it may ask for."""

    model_config = ConfigDict(extra="forbid")

    num_steps: int = Field(20, ge=1, le=MAX_STEPS, description="Denoising steps when a request gives none.")
    guidance_scale: float = Field(7.5, ge=0, le=30, description="Classifier-free guidance when a request gives none.")
    width: int = Field(512, ge=8, le=4096, description="Image width in pixels when a request gives none.")
    height: int = Field(512, ge=8, le=4096, description="Image height in pixels when a request gives none.")
    min_size: int = Field(64, ge=8, le=4096, description="Smallest width or height a request may ask for.")
    max_size: int = Field(1024, ge=8, le=4096, description="Largest width or height a request may ask for.")
    size_multiple: int = Field(8, ge=1, le=512, description="Width and height are multiples of this (the VAE's scale).")

    @model_validator(mode="after")
    def _sizes_fit(self) -> "GenerationOptions":
        if self.min_size > self.max_size:
            raise ValueError("min_size is above max_size")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not self.min_size <= value <= self.max_size or value % self.size_multiple:
                raise ValueError(f"{name} {value} is not within min_size..max_size and a multiple of size_multiple")
        return self


@dataclass(frozen=True)
class ImageRequest:
    """One image to draw, every value settled: what the adapter gets."""

    prompt: str
    negative_prompt: str
    num_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int


class GeneratedImage(BaseModel):
    """What was drawn; the image itself is the job's file named in the result line."""

    width: int
    height: int
    seed: int = Field(description="The seed used: the same seed and inputs give the same image.")
    num_steps: int
    guidance_scale: float
    media_type: str = "image/png"


def bounded(**bounds: int) -> Any:
    """An optional integer within ``bounds`` (``ge``, ``le``, ``multiple_of``): the
    bounds on the integer itself, so that the JSON schema says them too."""
    # The bounds before the validator that takes 20.0 as 20: after it, pydantic
    # writes them into the schema as unknown keys ("ge") instead of "minimum".
    return Optional[Annotated[int, Field(**bounds), BeforeValidator(integral)]]


def prompt_model(options: GenerationOptions) -> type[BaseModel]:
    """The object form of one input, with this model's sizes in its schema."""
    size = dict(ge=options.min_size, le=options.max_size, multiple_of=options.size_multiple)
    return create_model(
        "ImagePrompt",
        __base__=Strict,
        __doc__="A prompt and how to draw it; what is left out comes from the model's manifest.",
        prompt=(Text, Field(description="What to draw.")),
        negative_prompt=(str, Field("", description="What not to draw.")),
        num_steps=(bounded(ge=1, le=MAX_STEPS), Field(None, description="Denoising steps, 1 to 50.")),
        guidance_scale=(Optional[float], Field(None, ge=0, le=30, description="Classifier-free guidance.")),
        seed=(bounded(ge=0, le=MAX_SEED), Field(None, description="Random seed; drawn at random when left out.")),
        width=(bounded(**size), Field(None, description=f"Pixels; default {options.width}.")),
        height=(bounded(**size), Field(None, description=f"Pixels; default {options.height}.")),
    )


def png_bytes(image: Any) -> bytes:
    """A PIL image as PNG bytes (the same image, the same bytes: no timestamp)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TextToImage(Task):
    """Prompt -> image (a background job's PNG file)."""

    name = "text-to-image"
    Output = GeneratedImage
    jobs_only = True
    file_suffix: ClassVar[str] = "png"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.options: GenerationOptions = getattr(model, "generation", None) or GenerationOptions()
        self.Prompt = prompt_model(self.options)
        self.item_type = Union[Text, self.Prompt]

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        if isinstance(item, str):
            prompt = self.Prompt(prompt=check_text(item, limits, field))
        else:
            try:
                prompt = self.Prompt.model_validate(item)
            except ValidationError as error:
                raise schema_error(error, field) from None
            inner = f"{field}." if field else ""  # "" names the body's own fields (the book's routes)
            check_text(prompt.prompt, limits, f"{inner}prompt")
            if len(prompt.negative_prompt) > limits.max_text_chars:
                raise invalid(f"{inner}negative_prompt", f"text is longer than {limits.max_text_chars} characters")
        o = self.options
        request = ImageRequest(
            prompt=prompt.prompt,
            negative_prompt=prompt.negative_prompt,
            num_steps=prompt.num_steps or o.num_steps,
            guidance_scale=o.guidance_scale if prompt.guidance_scale is None else prompt.guidance_scale,
            seed=secrets.randbelow(MAX_SEED + 1) if prompt.seed is None else prompt.seed,
            width=prompt.width or o.width,
            height=prompt.height or o.height,
        )
        return Decoded(request, canonical_json(asdict(request)))

    def steps(self, item: Any, parameters: BaseModel, limits: Limits) -> int:
        return self.decode(item, parameters, limits, "input").value.num_steps

    def default_example(self) -> Any:
        return {"prompt": EXAMPLE_PROMPT, "num_steps": self.options.num_steps, "seed": 42}

    def encode(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        request: ImageRequest = decoded.value
        return {
            "width": result.width,
            "height": result.height,
            "seed": request.seed,
            "num_steps": request.num_steps,
            "guidance_scale": request.guidance_scale,
            "media_type": "image/png",
        }

    def file_bytes(self, result: Any) -> bytes:
        return png_bytes(result)
