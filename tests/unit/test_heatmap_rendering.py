"""Rendering the heatmaps. `blend_heatmap` against its rule applied to every pixel (node/results/sc.py's docstring): the
radiograph, the map's positive part scaled to [0, 1], colour along the ramp with opacity
0.45 x (map - 0.2) / 0.8 where the map exceeds 0.2, rounded to 8 bits. The node blends only the
shown pixels; the result must be the same, value for value."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from node.inference.model import normalise_cam, upsample_cam
from node.results.sc import EVIDENCE_FLOOR, MAX_OPACITY, blend_heatmap, colour_ramp


def every_pixel(unit: np.ndarray, cam: np.ndarray, max_side: int) -> np.ndarray:
    gray = unit if unit.ndim == 2 else unit @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if size != (height, width):
        image = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    base = image[0, 0].clamp(0, 1).numpy()
    heat = normalise_cam(upsample_cam(torch.from_numpy(cam), *size)).numpy()
    alpha = (MAX_OPACITY * np.clip((heat - EVIDENCE_FLOOR) / (1 - EVIDENCE_FLOOR), 0, 1))[..., None]
    blended = base[..., None] * (1 - alpha) + colour_ramp(heat) * alpha
    return np.round(np.clip(blended, 0, 1) * 255).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    rgb=st.booleans(),
    cam_shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    cam_offset=st.floats(-3, 3),
    max_side=st.sampled_from([16, 64, 1024]),
    seed=st.integers(0, 2**32 - 1),
)
def test_blending_only_the_shown_pixels_gives_every_pixel_the_rule(
    height: int,
    width: int,
    rgb: bool,
    cam_shape: tuple[int, int],
    cam_offset: float,
    max_side: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if rgb else (height, width)
    unit = rng.random(shape, dtype=np.float32)
    # offsets below zero give maps with no positive evidence, or only a little of it
    cam = (rng.normal(size=cam_shape) + cam_offset).astype(np.float32)
    got = blend_heatmap(unit, cam, max_side)
    want = every_pixel(unit, cam, max_side)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_a_map_without_positive_evidence_leaves_the_radiograph_gray() -> None:
    unit = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30)
    got = blend_heatmap(unit, -np.ones((10, 10), np.float32))
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 1], got[..., 2])
    assert np.array_equal(got[..., 0], np.round(unit * 255).astype(np.uint8))
