"""Handwritten digits: a small torch network with its own input and output.

The model folder holds its own code (``adapter: model:Digits`` in
``model.yaml``): the network, its input (an 8x8 grid of intensities 0-16, as
``sklearn.datasets.load_digits`` has them, or an image file in base64) and its
answer. ``training/train_digits.py`` trains the network on ``load_digits``
and writes ``weights.pt`` beside this file.
"""

from __future__ import annotations

from typing import Annotated, Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import BaseModel, Discriminator, Field, Tag
from torch import nn

from adapters.base import ModelAdapter
from serving.errors import ModelLoadError
from tasks.fields import Base64Image

SIDE = 8  # the grid is SIDE x SIDE
INK = 16.0  # the largest intensity of load_digits

Pixel = Annotated[float, Field(ge=0, le=INK)]
Grid = Annotated[
    list[Annotated[list[Pixel], Field(min_length=SIDE, max_length=SIDE)]],
    Field(min_length=SIDE, max_length=SIDE, description="8 rows of 8 intensities, 0 (paper) to 16 (ink)."),
]


def _kind(value: Any) -> str:
    return "image" if isinstance(value, (str, bytes)) else "grid"


# Tagged, so a bad input's error names the branch it was read as (inputs[0].grid[2][5]).
DigitInput = Annotated[Union[Annotated[Grid, Tag("grid")], Annotated[Base64Image, Tag("image")]], Discriminator(_kind)]


class Digit(BaseModel):
    digit: int = Field(ge=0, le=9, description="The most likely digit.")
    scores: dict[str, float] = Field(description="The probability of each digit, '0' to '9'.")


class DigitsNet(nn.Module):
    """Two 3x3 convolutions and a small classifier over an 8x8 grid."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of grids (N, 8, 8) scaled to [0, 1]."""
        return self.classifier(self.features(grids.unsqueeze(1)))


def image_to_grid(image: Image.Image) -> np.ndarray:
    """An image of one digit as load_digits' 8x8 grid, scaled to [0, 1].

    Dark ink on light paper is inverted first (load_digits is light on dark);
    the image is padded to a square and each of the 8x8 cells is the mean
    intensity of its block, as load_digits counted ink in 4x4 blocks of a
    32x32 bitmap. The digit should fill the image, as it does there.
    """
    grey = image.convert("L")
    if np.asarray(grey).mean() > 127:
        grey = ImageOps.invert(grey)
    side = max(grey.size)
    square = ImageOps.pad(grey, (side, side), color=0)
    cells = square.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(cells, dtype=np.float32) / 255.0


class Digits(ModelAdapter):
    """Serves ``DigitsNet``: one input is a grid or an image, one answer a ``Digit``."""

    Input = DigitInput
    Output = Digit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.net: DigitsNet | None = None

    def load(self) -> None:
        path = self.resolve(self.manifest.source or "weights.pt")
        if not path.is_file():
            raise ModelLoadError(self.name, f"{path.name} not found (train it: python training/train_digits.py)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        # Built on the meta device and given the loaded tensors: no weight is
        # initialised, so no torch compute runs in the Gunicorn master.
        with torch.device("meta"):
            net = DigitsNet()
        net.load_state_dict(state, strict=True, assign=True)
        self.net = net.eval()
        self.labels = [str(d) for d in range(10)]

    def preprocess(self, item: Any) -> np.ndarray:
        if isinstance(item, Image.Image):
            return image_to_grid(item)
        return np.asarray(item, dtype=np.float32) / INK

    def predict(self, batch: Sequence[np.ndarray]) -> list[Digit]:
        assert self.net is not None, "not loaded"
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(torch.from_numpy(np.stack(batch))), dim=1).tolist()
        return [
            Digit(digit=int(np.argmax(row)), scores={str(d): round(p, 6) for d, p in enumerate(row)})
            for row in probabilities
        ]
