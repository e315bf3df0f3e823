"""A small image-feature extractor for the FID exercise: the course's stand-in for Inception-v3.

FID, KID and precision/recall compare two sets of images through a feature map φ: image →
ℝᴰ. The literature uses Inception-v3's 2048-D pool features (Heusel et al. 2017), a 100 MB
network trained on ImageNet, too slow for notebooks on a laptop and meaningless on 16 × 16
grey-scale shapes. :class:`ShapesFeatures` plays its role here: a 3-layer CNN trained in this
repository on ``reference/shapes.py`` (the course's image set) to recognise the shape class and regress the shape's
position, size and intensity, whose 32-D penultimate layer (taken before its ReLU, so no unit
is constantly zero and the covariance has full rank), standardised by the mean and standard
deviation it has on the training images (so that each feature is O(1), as the cubic kernel
of KID expects), is φ. Like Inception's features, these
are *learned*: they see what the network needed for its task (shape, place, size, brightness),
and are blind to what it did not (e.g. pixel noise far below the anti-aliasing scale).

The weights (``reference/data/shapes_cnn.pt``, ~100 kB) are produced deterministically by
``python -m reference.train_features`` (seeded data, seeded initialisation, one thread) and
loaded with a SHA-256 check of their values (:data:`WEIGHTS_SHA256`): a stale or corrupted
file is an error, never a silent change of every FID in the course.

    model = load_feature_extractor()               # eval mode, float32, on the CPU
    phi = extract_features(images)                 # (N, 1, 16, 16) in [−1, 1] → (N, 32) float64
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

__all__ = ["ShapesFeatures", "WEIGHTS_PATH", "WEIGHTS_SHA256", "weights_digest", "load_feature_extractor",
           "extract_features", "NUM_FEATURES", "NUM_CLASSES", "NUM_REGRESSED"]

WEIGHTS_PATH = Path(__file__).resolve().parent / "data" / "shapes_cnn.pt"
#: SHA-256 of the weights' values (names, shapes and float32 bytes in order; see :func:`weights_digest`).
WEIGHTS_SHA256 = "fd91a88b31ed0adc42b7c24d53fdf864973455cd85ed0cfd529336c8d97ef958"

NUM_FEATURES = 32
NUM_CLASSES = 5  # reference/shapes.py's CLASSES
NUM_REGRESSED = 4  # centre x, centre y, scale, intensity (each standardised)


class ShapesFeatures(nn.Module):
    """φ: images ``(N, 1, H, W)`` in [−1, 1] → features ``(N, 32)``; ``head`` maps features to the training targets.

    conv 3×3 (1→16) ReLU, max-pool 2 → conv 3×3 (16→32) ReLU, max-pool 2 → conv 3×3 (32→64) ReLU →
    global average pool → linear 64→32 → standardised by the buffers ``shift`` and ``scale`` (the features);
    ``head`` (used in training only, on the unstandardised layer): ReLU → linear 32→(5 logits + 4 regressions).
    """

    num_features = NUM_FEATURES  # read by torchmetrics' FID/KID when given a custom feature module

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (N, 16, H/2, W/2)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (N, 32, H/4, W/4)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),                   # (N, 64, H/4, W/4)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),                        # (N, 64)
            nn.Linear(64, NUM_FEATURES),                                  # (N, 32): φ
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(NUM_FEATURES, NUM_CLASSES + NUM_REGRESSED))
        self.register_buffer("shift", torch.zeros(NUM_FEATURES))
        self.register_buffer("scale", torch.ones(NUM_FEATURES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.body(images) - self.shift) / self.scale


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each entry's name, shape and float32 bytes, in key order (independent of the file format)."""
    h = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(repr(tuple(value.shape)).encode())
        h.update(value.numpy().tobytes())
    return h.hexdigest()


def load_feature_extractor(path: str | Path = WEIGHTS_PATH, sha256: str | None = WEIGHTS_SHA256) -> ShapesFeatures:
    """The trained :class:`ShapesFeatures` in eval mode, its weights checked against ``sha256`` (None: unchecked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The feature extractor's weights are missing: {path}. "
                                "Run `python -m reference.train_features` in the repository to rebuild them.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    digest = weights_digest(state)
    if sha256 is not None and digest != sha256:
        raise ValueError(f"The weights in {path} have SHA-256 {digest}, not the expected {sha256}: "
                         "the file is stale or corrupted; rebuild it with `python -m reference.train_features`.")
    model = ShapesFeatures()
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


_MODEL: ShapesFeatures | None = None


@torch.no_grad()
def extract_features(images: torch.Tensor, model: ShapesFeatures | None = None, batch_size: int = 512) -> torch.Tensor:
    """φ(images): ``(N, 1, H, W)`` float images in [−1, 1] → ``(N, 32)`` float64 features, on the images' device."""
    global _MODEL
    if model is None:
        if _MODEL is None:
            _MODEL = load_feature_extractor()
        model = _MODEL
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W) grey-scale, got shape {tuple(images.shape)}.")
    model = model.to(images.device)
    chunks = [model(images[i:i + batch_size].to(torch.float32)) for i in range(0, images.shape[0], batch_size)]
    if not chunks:
        return images.new_zeros((0, NUM_FEATURES), dtype=torch.float64)
    return torch.cat(chunks).to(torch.float64)
