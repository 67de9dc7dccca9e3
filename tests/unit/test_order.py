"""The source's order of a study's images (node/results/order.py), and what the banner says of it."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from node.results.order import SourcePosition, source_order
from tests.support.factory import make_radiograph, raw


def position(series: int | None, instance: int | None) -> SourcePosition:
    return SourcePosition(series, instance, None)


def test_series_then_instance_number_never_arrival() -> None:
    arrived = [position(2, 1), position(1, 3), position(1, 1), position(1, 2)]
    assert source_order(arrived) == [2, 3, 1, 0]


def test_missing_numbers_go_last_and_ties_keep_arrival_order() -> None:
    arrived = [position(1, None), position(None, 1), position(1, 2), position(1, 2), position(1, 1)]
    # series 1 first (instance 1, then the two instance 2 in arrival order, then no instance),
    # then the image without a series number
    assert source_order(arrived) == [4, 2, 3, 0, 1]


def header(**values: object) -> Dataset:
    ds = make_radiograph()
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's about the invalid values
def test_position_is_read_leniently_from_the_raw_header() -> None:
    assert SourcePosition.of(header(SeriesNumber=3, InstanceNumber=12, ViewPosition="LL")) == (
        SourcePosition(3, 12, "LL")
    )
    assert SourcePosition.of(header(SeriesNumber=None, InstanceNumber=None)) == (
        SourcePosition(None, None, None)
    )
    invalid = make_radiograph()
    raw(invalid, "InstanceNumber", b"twelve")
    raw(invalid, "SeriesNumber", b"1\\2")
    raw(invalid, "ViewPosition", b"p/a")
    assert SourcePosition.of(invalid) == SourcePosition(None, None, None)
    beyond = make_radiograph()
    raw(beyond, "InstanceNumber", b"99999999999")
    assert SourcePosition.of(beyond).instance_number is None


def test_description_marks_what_the_source_does_not_say() -> None:
    assert SourcePosition(1, 2, "PA").describe() == "series 1, instance 2, view PA"
    assert SourcePosition(None, 2, None).describe() == "series -, instance 2, view -"
