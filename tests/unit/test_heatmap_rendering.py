"""`blend_heatmap` against its rule applied to every pixel (node/results/sc.py's docstring): the
radiograph, the map's positive part scaled to [0, 1], colour along the ramp with opacity
0.45 x (map - 0.2) / 0.8 where the map exceeds 0.2, rounded to 8 bits. The node blends only the
shown pixels; the result must be the same, value for value."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from node.results.sc import blend_heatmap, colour_ramp, display_and_map, opacity, to_8_bits


def every_pixel(unit: np.ndarray, cam: np.ndarray, max_side: int) -> np.ndarray:
    base, heat = display_and_map(unit, cam, max_side)
    alpha = opacity(heat)[..., None]
    return to_8_bits(base[..., None] * (1 - alpha) + colour_ramp(heat) * alpha)


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


def test_the_opacity_rises_from_the_evidence_floor_to_45_percent() -> None:
    heat = np.array([0.0, 0.1, 0.2, 0.6, 1.0, 1.5], np.float32)
    assert np.allclose(opacity(heat), [0, 0, 0, 0.225, 0.45, 0.45])
