"""Where on a source image the class activation map is strongest, as an image region.

The model sees the whole image scaled to ``INPUT_SIZE`` x ``INPUT_SIZE`` (aspect ratio not kept,
`node.inference.imaging`), so its map, ``h`` x ``w`` cells at feature resolution (10 x 10 for a 320 input),
covers the source image evenly: cell ``(i, j)`` is the source rectangle
``[j * Columns / w, (j + 1) * Columns / w] x [i * Rows / h, (i + 1) * Rows / h]``, as in the
heatmap (`node.inference.model.upsample_cam`, whose bilinear surface peaks at the centre of the peak cell).

The region is the bounding box of the cells whose value is at least ``level`` (half) of the map's
maximum and that are 4-connected to the cell of the maximum: the map's strongest blob, at the
map's own resolution. A map with nothing that stands out localises nothing, and its region is the
whole image, marked ``localised=False``:

- no positive value (the heatmap shows no colour either), or values that are not finite;
- every cell at least ``level`` of the maximum (a flat map).

Coordinates are image pixel coordinates (PS3.3 C.18.6.1.1): (0, 0) is the top left corner of
the top left pixel, x runs along a row (columns), y down a column (rows), and (Columns, Rows) is
the bottom right corner of the bottom right pixel.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

LEVEL = 0.5


@dataclass(frozen=True)
class Region:
    """An axis-aligned rectangle ``[x0, x1] x [y0, y1]`` in image pixel coordinates, with
    ``0 <= x0 < x1 <= Columns`` and ``0 <= y0 < y1 <= Rows``; ``localised`` is False when the
    map singled out nothing and the rectangle is the whole image."""

    x0: float
    y0: float
    x1: float
    y1: float
    localised: bool

    def polyline(self) -> np.ndarray:
        """The closed outline, float (5, 2): the four corners clockwise from the top left, then
        the first again (a closed POLYLINE, PS3.3 C.18.6.1.2)."""
        return np.array(
            [
                [self.x0, self.y0],
                [self.x1, self.y0],
                [self.x1, self.y1],
                [self.x0, self.y1],
                [self.x0, self.y0],
            ],
            dtype=np.float64,
        )


def cam_region(cam: np.ndarray, rows: int, columns: int, level: float = LEVEL) -> Region:
    """The region of a ``rows`` x ``columns`` image where ``cam`` (float, (h, w), any values) is
    strongest; see the module's docstring. Raises ValueError for an empty or non-2-D map, an
    image without pixels, or a ``level`` outside (0, 1]."""
    values = np.asarray(cam, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"a class activation map is 2-D and not empty, not {values.shape}")
    if rows < 1 or columns < 1:
        raise ValueError(f"an image has pixels, not {rows} x {columns}")
    if not 0 < level <= 1:
        raise ValueError(f"level is in (0, 1], not {level}")
    whole = Region(0.0, 0.0, float(columns), float(rows), localised=False)
    if not np.isfinite(values).all():
        return whole
    peak = float(values.max())
    if peak <= 0:
        return whole
    strong = values >= level * peak
    if strong.all():
        return whole
    start = np.unravel_index(int(np.argmax(values)), values.shape)
    cells = _connected(strong, (int(start[0]), int(start[1])))
    height, width = values.shape
    top, left = min(i for i, _ in cells), min(j for _, j in cells)
    bottom, right = max(i for i, _ in cells) + 1, max(j for _, j in cells) + 1
    return Region(
        left * columns / width,
        top * rows / height,
        right * columns / width,
        bottom * rows / height,
        localised=True,
    )


def _connected(mask: np.ndarray, start: tuple[int, int]) -> set[tuple[int, int]]:
    """The cells of ``mask`` 4-connected to ``start`` (which is in the mask)."""
    height, width = mask.shape
    seen = {start}
    queue = deque([start])
    while queue:
        i, j = queue.popleft()
        for cell in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            inside = 0 <= cell[0] < height and 0 <= cell[1] < width
            if inside and cell not in seen and mask[cell]:
                seen.add(cell)
                queue.append(cell)
    return seen
