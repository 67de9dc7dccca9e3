"""Text and colour scales burned into the node's images (heatmap SCs, the summary image).

Everything a radiologist must not miss is drawn in the pixels, in bands above and below the
radiograph (never over the anatomy), because image viewers show the pixels and little else of an
SC. Text is drawn with Pillow in a TrueType font: DejaVu (Debian ``fonts-dejavu-core``, installed by
``scripts/setup``; `FONT_DIR`, else wherever Pillow finds it under the XDG data directories) when it
is there, else Pillow's built-in scalable font, with a warning in the log.
Sizes are relative to the width of the image (`font_unit`), with a floor, so that the text stays
legible on a 1024-pixel radiograph and on a small one alike; a narrow radiograph is centred on a
wider canvas (`MIN_WIDTH`) rather than wrapping the text into many short lines.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
MIN_WIDTH = 640  # pixels: the narrowest canvas, so that a line of the banner fits
BACKGROUND = (0, 0, 0)
FOREGROUND = (255, 255, 255)
# Yellow on black: high luminance contrast, and it stands out. (A coloured background or a frame
# around the line made Tesseract lose it on full images; plain text on black does not.)
WARNING_COLOUR = (255, 220, 0)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


class Style(enum.Enum):
    """How a line is drawn: its font, relative size, and colour (always on black)."""

    TITLE = ("DejaVuSans-Bold.ttf", 1.3, FOREGROUND)
    WARNING = ("DejaVuSans-Bold.ttf", 1.3, WARNING_COLOUR)
    TEXT = ("DejaVuSans.ttf", 1.0, FOREGROUND)
    MONO = ("DejaVuSansMono.ttf", 0.8, FOREGROUND)

    @property
    def font_file(self) -> str:
        return str(self.value[0])

    @property
    def scale(self) -> float:
        return float(self.value[1])

    @property
    def colour(self) -> tuple[int, int, int]:
        return self.value[2]


@dataclass(frozen=True)
class Line:
    """One line of burned-in text (wrapped at word boundaries when it is too long)."""

    text: str
    style: Style = Style.TEXT


def font_unit(width: int) -> int:
    """The body text size in pixels for a canvas ``width`` pixels wide: 1/40 of it, 16 to 40."""
    return max(16, min(40, round(width / 40)))


@lru_cache(maxsize=64)
def font(style: Style, size: int) -> Font:
    """The font of ``style`` at ``size`` pixels; Pillow's built-in one when DejaVu is missing."""
    path = FONT_DIR / style.font_file
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        _warn_missing_font(path)
        return ImageFont.load_default(size)


@lru_cache(maxsize=1)
def _warn_missing_font(path: Path) -> None:
    log.warning(
        "font %s not found (Debian package fonts-dejavu-core): burned-in text uses Pillow's "
        "built-in font",
        path,
    )


def wrap(text: str, face: Font, width: float) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` pixels (a single word that is
    wider stays whole on its own line: a checksum is never cut)."""
    if not text.startswith(" ") and face.getlength(text) <= width:
        return [text]  # the usual case: one measure instead of one per word (same lines)
    return greedy_lines(text, face, width)


def greedy_lines(text: str, face: Font, width: float) -> list[str]:
    """`wrap`'s rule: words (split at single spaces) added to the current line while it stays
    within ``width``; a word that does not fit starts the next line."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and face.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return lines


def text_band(lines: Sequence[Line], width: int, unit: int | None = None) -> np.ndarray:
    """The ``lines`` drawn on a band ``width`` pixels wide: RGB uint8 of shape (height, width, 3).

    ``unit`` is the body text size in pixels (default `font_unit` of ``width``); each line is
    wrapped to the width."""
    unit = unit or font_unit(width)
    margin = max(4, unit // 2)
    rows: list[tuple[str, Style, Font, int]] = []
    for line in lines:
        face = font(line.style, max(8, round(unit * line.style.scale)))
        height = _line_height(face)
        rows.extend(
            (part, line.style, face, height) for part in wrap(line.text, face, width - 2 * margin)
        )
    total = margin + sum(height for *_rest, height in rows) + margin
    band = Image.new("RGB", (width, total), BACKGROUND)
    draw = ImageDraw.Draw(band)
    y = margin
    for text, style, face, height in rows:
        draw.text((margin, y + height // 2), text, font=face, fill=style.colour, anchor="lm")
        y += height
    return np.asarray(band)


@lru_cache(maxsize=64)
def _line_height(face: Font) -> int:
    _left, top, _right, bottom = face.getbbox("Ag")
    return round((bottom - top) * 1.5)


def colour_scale(
    colours: np.ndarray, width: int, label: str, unit: int | None = None
) -> np.ndarray:
    """A band with ``label``, then "low", a bar of ``colours`` (N, 3) in [0, 1] from left to right,
    and "high": RGB uint8 of shape (height, width, 3)."""
    unit = unit or font_unit(width)
    margin = max(4, unit // 2)
    face = font(Style.TEXT, unit)
    height = _line_height(face)
    caption = text_band([Line(label)], width, unit)
    band = Image.new("RGB", (width, height + margin), BACKGROUND)
    draw = ImageDraw.Draw(band)
    low_width = face.getlength("low ")
    high_width = face.getlength(" high")
    left = margin + round(low_width)
    right = width - margin - round(high_width)
    middle = height // 2
    draw.text((margin, middle), "low", font=face, fill=FOREGROUND, anchor="lm")
    draw.text((width - margin, middle), "high", font=face, fill=FOREGROUND, anchor="rm")
    if right > left:
        positions = np.linspace(0, len(colours) - 1, right - left)
        bar = np.stack(
            [np.interp(positions, np.arange(len(colours)), colours[:, c]) for c in range(3)],
            axis=-1,
        )
        bar_height = max(4, round(height * 0.6))
        strip = np.round(np.clip(bar, 0, 1) * 255).astype(np.uint8)[None].repeat(bar_height, 0)
        band.paste(Image.fromarray(strip), (left, middle - bar_height // 2))
    return np.concatenate([caption[: caption.shape[0] - margin], np.asarray(band)], axis=0)


def stack(parts: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """RGB images (H, W, 3) stacked top to bottom on a black canvas as wide as the widest (or
    ``width``), each centred horizontally; RGB uint8."""
    width = width or max(part.shape[1] for part in parts)
    canvas = np.zeros((sum(part.shape[0] for part in parts), width, 3), np.uint8)
    y = 0
    for part in parts:
        height, part_width = part.shape[:2]
        x = (width - part_width) // 2
        canvas[y : y + height, x : x + part_width] = part
        y += height
    return canvas
