"""The cache in front of highdicom's IOD lookups (node/results/highdicom_lookups.py): what it
reaches into still exists with the shape relied on, every module that calls the lookup by its
own name is served by the cache, installing it twice keeps one cache, and it answers as
highdicom does, errors included.

The reference is a fresh copy of highdicom's module, loaded from its file, so the answers are
compared with highdicom's own code and not with anything the cache holds."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from types import ModuleType

import highdicom._standard_utils as standard_utils
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import UID, generate_uid

import node.results  # noqa: F401  (importing the package installs the cache)
from node.inference.engine import ImageResult, StudyResult
from node.results.highdicom_lookups import CHECKED_NAMES, cache_iod_lookups
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.sanitise import clean_source
from node.results.sc import build_sc
from node.results.sr import build_sr
from node.results.summary import build_summary
from tests.support.factory import make_radiograph


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("highdicom_reference", standard_utils.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REFERENCE = _reference().is_attribute_in_iod
SOP_CLASSES = sorted(standard_utils.get_sop_class_iod_map())
PATHS: dict[str, set[str]] = {}
for _module in standard_utils.get_module_attribute_map().values():
    for _attribute in _module:
        PATHS.setdefault(_attribute["keyword"], set()).update(_attribute["path"])
KEYWORDS = [*sorted(PATHS), "NotAnAttributeOfAnyModule"]
NESTED = sorted(keyword for keyword, path in PATHS.items() if path)  # found inside sequences
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"


def outcome(lookup: Callable[..., bool], *args: object) -> tuple[object, ...]:
    try:
        return ("answer", lookup(*args))
    except Exception as exc:  # compared, not swallowed
        return ("error", type(exc), str(exc))


def test_the_lookup_keeps_the_signature_relied_on() -> None:
    parameters = list(inspect.signature(REFERENCE).parameters)
    assert parameters == ["attribute", "sop_class_uid", "exclude_path_elements"]
    assert callable(standard_utils.does_iod_have_pixel_data)


def test_every_module_that_names_the_lookup_is_served_by_one_cache() -> None:
    cached = standard_utils.is_attribute_in_iod
    cached("PixelData", SC)
    held = cached.cache_info().currsize  # type: ignore[attr-defined]
    assert held > 0
    cache_iod_lookups()  # a second install keeps the function and what it has learnt
    assert standard_utils.is_attribute_in_iod is cached
    assert cached.cache_info().currsize >= held  # type: ignore[attr-defined]
    for name in CHECKED_NAMES:
        assert importlib.import_module(name).is_attribute_in_iod is cached, name
    import highdicom  # noqa: F401  (its package imports every subpackage)

    for name, module in list(sys.modules.items()):
        if name.startswith("highdicom.") and module is not None:
            assert getattr(module, "is_attribute_in_iod", cached) is cached, name


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
    want = outcome(REFERENCE, keyword, sop_class, exclude)
    assert outcome(standard_utils.is_attribute_in_iod, keyword, sop_class, exclude) == want
    assert outcome(standard_utils.is_attribute_in_iod, keyword, sop_class, exclude) == want


@settings(max_examples=300, deadline=None)
@given(data=st.data(), sop_class=st.sampled_from(SOP_CLASSES))
def test_questions_whose_answer_depends_on_the_excluded_path(
    data: st.DataObject, sop_class: str
) -> None:
    """Keywords found inside sequences, asked without and then with some of the sequences on
    their paths excluded, in any position of the list."""
    keyword = data.draw(st.sampled_from(NESTED))
    on_path = sorted(PATHS[keyword])
    excluded = data.draw(
        st.lists(st.sampled_from([*on_path, "ContentSequence", "IconImageSequence"]), max_size=4)
    )
    for exclude in (None, excluded, list(reversed(excluded)), excluded[1:]):
        want = outcome(REFERENCE, keyword, sop_class, exclude)
        assert outcome(standard_utils.is_attribute_in_iod, keyword, sop_class, exclude) == want


def test_the_excluded_path_is_part_of_the_question() -> None:
    # A Comprehensive SR has PixelData only inside IconImageSequence items.
    lookup = standard_utils.is_attribute_in_iod
    for _ in range(2):
        assert lookup("PixelData", SR) is True
        assert lookup("PixelData", SR, ["IconImageSequence"]) is False
        assert lookup("PixelData", SR, ["ContentSequence", "IconImageSequence"]) is False
        assert lookup("PixelData", SR, None) is True


@pytest.mark.parametrize(
    "make_args",
    [
        # a str: highdicom tests substrings of it
        lambda: ("PixelData", SR, "IconImageSequence"),
        lambda: ("PixelData", SR, (name for name in ["IconImageSequence"])),  # a generator
        lambda: ("PixelData", SR, [["IconImageSequence"]]),
        lambda: ("PixelData", [SR], None),
        lambda: ("PixelData", UID(SR), ("IconImageSequence",)),
        lambda: (None, SC, None),
    ],
)
def test_arguments_highdicom_never_passes_get_highdicom_s_own_answer(
    make_args: Callable[[], tuple[object, ...]],
) -> None:
    want = outcome(REFERENCE, *make_args())
    assert outcome(standard_utils.is_attribute_in_iod, *make_args()) == want


def test_an_unknown_sop_class_still_raises_every_time() -> None:
    for _ in range(2):
        with pytest.raises(KeyError, match="No IOD found"):
            standard_utils.is_attribute_in_iod("PixelData", "1.2.3.4")


def test_every_question_a_result_set_asks_gets_highdicom_s_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The questions the node's writers really ask (the SR with its regions, a heatmap SC, the
    summary), each answered by the cache as by highdicom."""
    asked: list[tuple[object, ...]] = []
    cached = standard_utils.is_attribute_in_iod

    def recording(
        attribute: str, sop_class_uid: str, exclude_path_elements: list[str] | None = None
    ) -> bool:
        asked.append((attribute, sop_class_uid, exclude_path_elements))
        return cached(attribute, sop_class_uid, exclude_path_elements)

    for name in CHECKED_NAMES:
        monkeypatch.setattr(importlib.import_module(name), "is_attribute_in_iod", recording)
    sources = [clean_source(make_radiograph(rows=40, columns=30, seed=i))[0] for i in range(2)]
    cams = np.random.default_rng(0).normal(size=(2, 10, 10)).astype(np.float32)
    result = StudyResult("wrist", 0.7, 0.5, True, tuple(ImageResult(0.7, c) for c in cams))
    algorithm = AlgorithmInfo("MURA DenseNet-169", "1", (), untrained=True)
    identity = NodeIdentity(device_uid=generate_uid(), ae_title="MURA_NODE")
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    build_sr(sources, result, algorithm, identity, **uids)
    rgb = np.zeros((60, 40, 3), np.uint8)
    build_sc(
        sources[0], rgb, identity, instance_number=1, probability=0.7, algorithm_name="A", **uids
    )
    build_summary(sources, rgb, result, algorithm, identity, **uids)
    keywords = {args[0] for args in asked}
    assert {"ContentDate", "PixelData", "NumberOfFrames"} <= keywords, keywords
    for args in asked:
        assert outcome(cached, *args) == outcome(REFERENCE, *args), args
