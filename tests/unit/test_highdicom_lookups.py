"""The cache in front of highdicom's IOD lookups (node/results/highdicom_lookups.py): what it
reaches into still exists with the shape relied on, every module that calls the lookup by its
own name is served by the cache, and the cache answers as highdicom does."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable

import highdicom._standard_utils as standard_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import node.results  # noqa: F401  (importing the package installs the cache)
from node.results.highdicom_lookups import CHECKED_NAMES, cache_iod_lookups

ORIGINAL = standard_utils.is_attribute_in_iod.uncached  # type: ignore[attr-defined]
SOP_CLASSES = sorted(standard_utils.get_sop_class_iod_map())
KEYWORDS = sorted(
    {
        attribute["keyword"]
        for module in standard_utils.get_module_attribute_map().values()
        for attribute in module
    }
    | {"NotAnAttributeOfAnyModule"}
)


def test_the_lookup_keeps_the_signature_relied_on() -> None:
    parameters = list(inspect.signature(ORIGINAL).parameters)
    assert parameters == ["attribute", "sop_class_uid", "exclude_path_elements"]
    assert callable(standard_utils.does_iod_have_pixel_data)


def test_every_module_that_names_the_lookup_is_served_by_the_cache() -> None:
    cache_iod_lookups()  # a second call changes nothing
    cached = standard_utils.is_attribute_in_iod
    assert cached is not ORIGINAL
    for name in CHECKED_NAMES:
        assert importlib.import_module(name).is_attribute_in_iod is cached, name
    # and no other highdicom module holds the uncached function under that name
    import highdicom
    import highdicom.sc
    import highdicom.sr

    for name, module in list(sys.modules.items()):
        if name.startswith("highdicom") and module is not None:
            assert getattr(module, "is_attribute_in_iod", cached) is cached, name
    assert highdicom.sc.SCImage and highdicom.sr.ComprehensiveSR


@settings(max_examples=300, deadline=None)
@given(
    keyword=st.sampled_from(KEYWORDS),
    sop_class=st.sampled_from(SOP_CLASSES),
    exclude=st.one_of(st.none(), st.lists(st.sampled_from(KEYWORDS), max_size=3)),
)
def test_the_cache_answers_as_highdicom_does(
    keyword: str, sop_class: str, exclude: list[str] | None
) -> None:
    # some of highdicom's tables name a module they lack, and it raises for those: the cache
    # must raise the same, every time
    want = outcome(ORIGINAL, keyword, sop_class, exclude)
    assert outcome(standard_utils.is_attribute_in_iod, keyword, sop_class, exclude) == want
    assert outcome(standard_utils.is_attribute_in_iod, keyword, sop_class, exclude) == want


def outcome(lookup: Callable[..., bool], *args: object) -> tuple[object, ...]:
    try:
        return ("answer", lookup(*args))
    except Exception as exc:  # compared, not swallowed
        return ("error", type(exc), str(exc))


@pytest.mark.parametrize(
    "sop_class", ["1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33"]
)
def test_pixel_data_answers_are_unchanged(sop_class: str) -> None:
    image = sop_class.endswith(".1.7")  # Secondary Capture: an image; Comprehensive SR: not
    assert standard_utils.does_iod_have_pixel_data(sop_class) is image
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        assert standard_utils.is_attribute_in_iod(
            keyword, sop_class, ["IconImageSequence"]
        ) is ORIGINAL(keyword, sop_class, ["IconImageSequence"])


def test_an_unknown_sop_class_still_raises_every_time() -> None:
    for _ in range(2):
        with pytest.raises(KeyError, match="No IOD found"):
            standard_utils.is_attribute_in_iod("PixelData", "1.2.3.4")


def test_the_excluded_path_is_part_of_the_question() -> None:
    # A Comprehensive SR has PixelData only inside IconImageSequence items.
    sr = "1.2.840.10008.5.1.4.1.1.88.33"
    lookup = standard_utils.is_attribute_in_iod
    for _ in range(2):
        assert lookup("PixelData", sr) is True
        assert lookup("PixelData", sr, ["IconImageSequence"]) is False
        assert lookup("PixelData", sr, None) is True
