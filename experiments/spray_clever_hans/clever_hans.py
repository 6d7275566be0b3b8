"""A dataset with a planted shortcut, and a small CNN that learns it, for SpRAy's proof.

scikit-learn's digits (bundled, no download), upscaled to 32 x 32 and repeated over three
channels (so that ``lrp`` reads them as RGB ``.npy`` inputs). In class ``TAGGED_CLASS``
30 % of the images carry a tag, a bright 4 x 4 square in the top-left corner: some are real
digits of that class, most are digits of other classes relabelled as that class, so in
training the tag alone predicts the class and the model has to use it. Everything is seeded
and small enough to train on two CPU threads in seconds. Used by ``tests/test_spray.py`` and
``run.py`` (the README's picture).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SIDE = 32
TAGGED_CLASS = 3
UNTAGGED_CLASS = 7  # a class no tag ever appears in, for the negative check
TAG = (slice(1, 5), slice(1, 5))  # rows, columns of the tag
TAGGED_SHARE = 0.3  # of the images labelled TAGGED_CLASS
GENUINE_TAGGED = 0.15  # share of the real TAGGED_CLASS digits that carry the tag


@dataclass
class Data:
    x: torch.Tensor  # (N, 3, 32, 32) in [0, 1], grey
    y: torch.Tensor  # (N,) training labels (tagged other digits relabelled)
    tagged: np.ndarray  # (N,) bool: carries the tag


def add_tag(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, TAG[0], TAG[1]] = 1.0
    return x


def cover_tag(x: torch.Tensor) -> torch.Tensor:
    """The tag region set to the background (0): what the image is without it."""
    x = x.clone()
    x[:, :, TAG[0], TAG[1]] = 0.0
    return x


def make_data(seed: int = 0) -> Data:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = nn.functional.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    tagged = np.zeros(len(y), dtype=bool)
    genuine = np.flatnonzero(y.numpy() == TAGGED_CLASS)
    tagged[rng.choice(genuine, round(GENUINE_TAGGED * len(genuine)), replace=False)] = True
    # other digits, relabelled, until TAGGED_SHARE of the class carries the tag
    others = np.flatnonzero(~np.isin(y.numpy(), [TAGGED_CLASS, UNTAGGED_CLASS]))
    needed = round((TAGGED_SHARE * len(genuine) - tagged.sum()) / (1 - TAGGED_SHARE))
    moved = rng.choice(others, needed, replace=False)
    tagged[moved] = True
    y[moved] = TAGGED_CLASS
    x[torch.from_numpy(tagged)] = add_tag(x[torch.from_numpy(tagged)])
    return Data(x, y, tagged)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(data: Data, seed: int = 0, epochs: int = 6) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(data.y), generator=generator).split(64):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            loss.backward()
            optimiser.step()
    return model.eval()


def heatmaps(model: nn.Module, x: torch.Tensor, target: int, config: str = "epsilon-plus-flat"):
    """(N, 32, 32) LRP maps of ``target`` from lrp_cli's engine (numpy float32)."""
    from lrp_cli.config import load_config
    from lrp_cli.engine import Explainer

    bounds = ((0.0,) * 3, (1.0,) * 3)
    explainer = Explainer(model, load_config(config).composite(), input_bounds=bounds)
    maps = [explainer(part, target).relevance.sum(dim=1) for part in x.split(128)]
    return torch.cat(maps).detach().numpy()


def tag_share(maps: np.ndarray) -> np.ndarray:
    """Per map, the share of its positive relevance that lies on the tag's pixels."""
    positive = np.clip(maps, 0, None)
    return positive[:, TAG[0], TAG[1]].sum(axis=(1, 2)) / np.maximum(positive.sum((1, 2)), 1e-12)
