"""highdicom's lookups of the standard's IOD tables, answered once per question.

highdicom asks, while it builds an object, whether an attribute belongs to an IOD
(``highdicom._standard_utils.is_attribute_in_iod``: ContentDate and ContentTime for every SOP
instance, PixelData for every image it references or makes, the multi-frame attributes for every
region of an SR). Each answer walks every attribute of every module of the IOD in highdicom's
tables of PS3.3, about 3 ms on this project's machines, and a study's result set asks about
twenty times: about 15 % of the CPU time of writing a three-image study's results
(docs/performance.md). The answer depends only on the question and on tables that never change
while the process runs, so `cache_iod_lookups` puts a cache in front of highdicom's own function:
the same answers, each computed once per process, for the questions highdicom asks (a keyword, a
UID, and a list of keywords or nothing); any other arguments go to highdicom's function as they
are. An unknown SOP class still raises highdicom's KeyError (an error is never cached).

This is the node's only reach into a private name of highdicom. ``CHECKED_NAMES`` lists the modules
that import the function by name; tests/unit/test_highdicom_lookups.py checks the function's
signature and that every one of them is served by the cache, so an upgrade of highdicom that
changes either fails there first (pyproject.toml pins highdicom to 0.28.x).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from functools import lru_cache, wraps

import highdicom._standard_utils as standard_utils

# highdicom modules that call ``is_attribute_in_iod`` through a name of their own (imported with
# ``from highdicom._standard_utils import is_attribute_in_iod``); the rest call it, directly or
# through ``does_iod_have_pixel_data``, as ``highdicom._standard_utils``'s global.
CHECKED_NAMES = ("highdicom._standard_utils", "highdicom.base", "highdicom.sr.content")

Lookup = Callable[[str, str, "Sequence[str] | None"], bool]


def _question(
    attribute: object, sop_class_uid: object, excluded: object
) -> tuple[str, str, tuple[str, ...] | None] | None:
    """The cache's key for what highdicom asks (a keyword, a UID, a list of keywords or
    nothing); None for any other arguments."""
    if not (isinstance(attribute, str) and isinstance(sop_class_uid, str)):
        return None
    if excluded is None:
        return attribute, sop_class_uid, None
    if isinstance(excluded, list | tuple) and all(isinstance(e, str) for e in excluded):
        return attribute, sop_class_uid, tuple(excluded)
    return None


def _cached(lookup: Lookup) -> Lookup:
    @lru_cache(maxsize=4096)
    def answer(attribute: str, sop_class_uid: str, excluded: tuple[str, ...] | None) -> bool:
        return lookup(attribute, sop_class_uid, None if excluded is None else list(excluded))

    @wraps(lookup)
    def is_attribute_in_iod(
        attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
    ) -> bool:
        question = _question(attribute, sop_class_uid, exclude_path_elements)
        if question is None:  # not what highdicom asks: its own answer
            return lookup(attribute, sop_class_uid, exclude_path_elements)
        return answer(*question)

    is_attribute_in_iod.uncached = lookup  # type: ignore[attr-defined]
    is_attribute_in_iod.cache_info = answer.cache_info  # type: ignore[attr-defined]
    return is_attribute_in_iod


def cache_iod_lookups() -> None:
    """Serve highdicom's ``is_attribute_in_iod`` from a cache in every module of
    ``CHECKED_NAMES`` (idempotent)."""
    current = standard_utils.is_attribute_in_iod
    original = getattr(current, "uncached", current)
    cached = current if original is not current else _cached(original)
    for name in CHECKED_NAMES:
        module = importlib.import_module(name)
        if getattr(module, "is_attribute_in_iod", None) in (original, cached):
            module.is_attribute_in_iod = cached  # type: ignore[attr-defined]
