"""The image region where a class activation map is strongest (node/results/region.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from node.results.region import LEVEL, Region, cam_region


def test_region_is_the_half_maximum_blob_around_the_peak() -> None:
    cam = np.full((10, 10), -1.0, np.float32)
    cam[2:4, 5:8] = 2.0  # the blob: at least half of the peak, around it
    cam[3, 6] = 3.0  # the peak
    cam[4, 6] = 1.49  # next to the blob, under half the peak
    cam[8, 0] = 2.9  # strong, but not connected to the peak
    region = cam_region(cam, rows=1000, columns=800)
    # Cells (rows 2-3, columns 5-7) of a 10 x 10 map over 800 columns x 1000 rows.
    assert region == Region(400.0, 200.0, 640.0, 400.0, localised=True)
    assert region.polyline().tolist() == [
        [400.0, 200.0],
        [640.0, 200.0],
        [640.0, 400.0],
        [400.0, 400.0],
        [400.0, 200.0],
    ]


def test_a_single_strong_cell_is_its_own_region() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[0, 9] = 1.0  # a peak in the top right corner
    assert cam_region(cam, rows=320, columns=320) == Region(288.0, 0.0, 320.0, 32.0, True)


@pytest.mark.parametrize(
    "cam",
    [
        np.zeros((10, 10)),  # no evidence at all
        np.full((10, 10), -2.5),  # negative everywhere: the heatmap shows no colour
        np.full((10, 10), 0.3),  # flat
        np.linspace(0.6, 1.0, 100).reshape(10, 10),  # every cell above half the peak
        np.where(np.eye(10) > 0, np.nan, 1.0),  # not finite
        np.where(np.eye(10) > 0, np.inf, 1.0),
    ],
    ids=["zero", "negative", "flat", "all-strong", "nan", "inf"],
)
def test_a_map_that_singles_out_nothing_gives_the_whole_image(cam: np.ndarray) -> None:
    assert cam_region(cam, rows=480, columns=640) == Region(0.0, 0.0, 640.0, 480.0, False)


@pytest.mark.parametrize(
    ("cam", "rows", "columns", "level"),
    [
        (np.zeros((0, 10)), 10, 10, LEVEL),
        (np.zeros(10), 10, 10, LEVEL),
        (np.zeros((10, 10)), 0, 10, LEVEL),
        (np.zeros((10, 10)), 10, 10, 0.0),
        (np.zeros((10, 10)), 10, 10, 1.5),
    ],
)
def test_invalid_arguments_are_refused(
    cam: np.ndarray, rows: int, columns: int, level: float
) -> None:
    with pytest.raises(ValueError):
        cam_region(cam, rows, columns, level)


maps = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(
        np.float32,
        shape,
        elements=st.floats(-4, 4, width=32)
        | st.sampled_from([0.0, 1.0, -1.0]),  # ties and flat parts
    )
)


@settings(max_examples=300, deadline=None)
@given(cam=maps, rows=st.integers(1, 4000), columns=st.integers(1, 4000))
@example(cam=np.array([[1e-45, 0.0]], np.float32), rows=1, columns=1)  # a subnormal peak
def test_region_properties(cam: np.ndarray, rows: int, columns: int) -> None:
    region = cam_region(cam, rows, columns)
    # Inside the image, and a true rectangle.
    assert 0 <= region.x0 < region.x1 <= columns
    assert 0 <= region.y0 < region.y1 <= rows
    outline = region.polyline()
    assert outline.shape == (5, 2) and (outline[0] == outline[-1]).all()
    values = cam.astype(np.float64)  # cam_region works in float64: a float32 half of a
    peak = float(values.max())  # subnormal peak would underflow to 0 and make every cell strong
    strong = values >= LEVEL * peak
    if peak <= 0 or strong.all():
        assert region == Region(0.0, 0.0, float(columns), float(rows), localised=False)
        return
    assert region.localised
    # The bounding box of the connected strong cells around the maximum, checked against
    # scipy's labelling (4-connected), mapped to pixels as the model's input scaling does.
    height, width = cam.shape
    labels, _ = ndimage.label(strong)
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    rows_of, columns_of = np.nonzero(labels == labels[i, j])
    assert region.x0 == pytest.approx(columns_of.min() * columns / width)
    assert region.x1 == pytest.approx((columns_of.max() + 1) * columns / width)
    assert region.y0 == pytest.approx(rows_of.min() * rows / height)
    assert region.y1 == pytest.approx((rows_of.max() + 1) * rows / height)
    # On the maximum: the whole cell of the maximum lies in the region.
    assert region.x0 <= j * columns / width and (j + 1) * columns / width <= region.x1 + 1e-9
    assert region.y0 <= i * rows / height and (i + 1) * rows / height <= region.y1 + 1e-9
