"""Burned-in text (node/results/drawing.py): `wrap`, which measures a line that fits once, against
the greedy rule it otherwise applies word by word, and the
colour scale band drawn once per size (node/results/sc.py `scale_band`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.results.drawing import Style, colour_scale, font, greedy_lines, wrap
from node.results.sc import SCALE_LABEL, scale_band, scale_colours


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="aiWM.:-0123456789 ", max_size=80),
    style=st.sampled_from(list(Style)),
    size=st.integers(8, 40),
    width=st.integers(20, 900),
)
def test_wrap_gives_the_greedy_lines(text: str, style: Style, size: int, width: int) -> None:
    face = font(style, size)
    assert wrap(text, face, width) == greedy_lines(text, face, width)


@pytest.mark.parametrize(
    "text", ["", " ", "  leading", "trailing  ", "a  b", "sha256:" + "ab" * 40]
)
def test_wrap_of_spaces_and_long_words(text: str) -> None:
    face = font(Style.MONO, 16)
    for width in (10, 200, 2000):
        assert wrap(text, face, width) == greedy_lines(text, face, width)


def test_the_colour_scale_band_is_drawn_once_per_size_and_cannot_be_changed() -> None:
    band = scale_band(700, 18)
    assert scale_band(700, 18) is band
    assert np.array_equal(band, colour_scale(scale_colours(), 700, SCALE_LABEL, 18))
    assert band.shape[1] == 700 and band.dtype == np.uint8
    with pytest.raises(ValueError, match="read-only"):
        band[0, 0] = 1
