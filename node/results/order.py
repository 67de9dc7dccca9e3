"""Where an image sits in its study: the order in which results number the study's images.

Results number images as the source does, never in the order they arrived (a PACS may forward a
study in any order): by SeriesNumber, then InstanceNumber (PS3.3 C.7.3.1 and C.7.6.1, both IS). An
image whose number is missing or not a valid IS (not an integer, several values, beyond the IS
range) sorts after the numbered images at that level; images that tie keep their arrival order.
The SR's "Image N" groups, the heatmap SCs' InstanceNumber and the summary image all follow it.

The same numbers, and the ViewPosition (CS, e.g. PA, LL), are shown in the heatmap banner so that
a radiologist can tell which source image a heatmap belongs to. They are read here leniently from
the source header, for display and ordering only; they are not copied into result headers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_IS_RANGE = (-(2**31), 2**31 - 1)  # PS3.5 6.2: IS
_CODE_STRING = re.compile(r"[A-Z0-9_ ]{1,16}")  # PS3.5 6.2: CS


@dataclass(frozen=True)
class SourcePosition:
    """An image's SeriesNumber, InstanceNumber and ViewPosition; None when missing or invalid."""

    series_number: int | None
    instance_number: int | None
    view_position: str | None

    @classmethod
    def of(cls, source: Dataset) -> SourcePosition:
        """Read from a source header (raw, not cleaned); never raises on a bad value."""
        return cls(
            _integer(source, "SeriesNumber"),
            _integer(source, "InstanceNumber"),
            _code_string(source, "ViewPosition"),
        )

    def describe(self) -> str:
        """E.g. "series 1, instance 2, view PA"; "-" for what the source does not say."""

        def shown(value: object) -> str:
            return "-" if value is None else str(value)

        return (
            f"series {shown(self.series_number)}, instance {shown(self.instance_number)}, "
            f"view {shown(self.view_position)}"
        )


def source_order(positions: Sequence[SourcePosition]) -> list[int]:
    """Indices of ``positions`` (given in arrival order) sorted into the source's order."""

    def key(index: int) -> tuple[bool, int, bool, int, int]:
        position = positions[index]
        series, instance = position.series_number, position.instance_number
        return (series is None, series or 0, instance is None, instance or 0, index)

    return sorted(range(len(positions)), key=key)


def _value(source: Dataset, keyword: str) -> Any:
    try:
        value = source.get(keyword)
    except Exception:  # a raw value pydicom cannot convert
        return None
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) == 1 else None
    return value


def _integer(source: Dataset, keyword: str) -> int | None:
    value = _value(source, keyword)
    if value is None or str(value).strip() == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if _IS_RANGE[0] <= number <= _IS_RANGE[1] else None


def _code_string(source: Dataset, keyword: str) -> str | None:
    value = _value(source, keyword)
    text = str(value).strip() if value is not None else ""
    return text if _CODE_STRING.fullmatch(text) else None
