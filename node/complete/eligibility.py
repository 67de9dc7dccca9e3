"""Which studies are upper-extremity radiographs, and which MURA study type each one is.

Pure functions over what the images say about themselves: their coded anatomy
(AnatomicRegionSequence, stored at ingest as "SCHEME:CODE", e.g. "SCT:14975008") and their text.
The codes are data in ``dicom_profiles/anatomy.toml`` (DICOM PS3.16 CID 4031 and Annex L), the
terms and the order of the fields in ``dicom_profiles/study_types.toml``.

Rules, per image (CR or DX; other objects never count):

1. Read the fields in the vocabulary's order (AnatomicRegionSequence, BodyPartExamined,
   ProtocolName, SeriesDescription, StudyDescription). The coded anatomy comes first: a code is
   more exact than free text, so a code of a study type decides the image's type whatever the text
   says. After it, the first text field that names exactly one study type, and no other body part,
   decides the image's type.
2. A code of a body part outside the upper extremity (SCT 816094009 "Chest", ...), or a text field
   that names only such body parts (CHEST, KNEE, ...), decides that the image is not eligible.
3. A code of the upper limb without a type ("Upper limb", "Upper arm", "Extremity"), an unknown
   code or scheme, text fields that name nothing (e.g. only "EXTREMITY" or "ARM"), or several
   types ("HAND AND WRIST") let the next field decide. When no field decides, the leftmost type
   named by the first text field that named several is used.

Per study: the type most of its typed images have. A study with no typed image, or a tie between
types, is not eligible and the reason says why. Images of other body parts within an eligible
study are kept out of the analysis (their instance rows carry no study type).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from node.profiles import CODED_FIELD, AnatomyCodes, Vocabulary


@dataclass(frozen=True)
class ImageVerdict:
    study_type: str | None  # a MURA study type, or None
    other_body_part: bool  # True when a field named a body part outside the upper extremity
    evidence: str  # e.g. "BodyPartExamined 'HAND'", "AnatomicRegionSequence SCT 14975008 'Forearm'"


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    study_type: str | None
    reason: str


def normalise(text: str) -> str:
    """Upper-case, strip accents, and keep letters and digits separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.upper())
    ascii_only = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^A-Z0-9]+", " ", ascii_only).split())


def _positions(text: str, terms: Sequence[str]) -> list[int]:
    padded = f" {text} "
    found = []
    for term in terms:
        index = padded.find(f" {normalise(term)} ")
        if index >= 0:
            found.append(index)
    return found


def classify_code(coded: str, anatomy: AnatomyCodes) -> ImageVerdict | None:
    """What a stored code ("SCHEME:CODE") decides, or None when it decides nothing."""
    designator, _, code = coded.partition(":")
    region = anatomy.region(designator, code)
    if region is None or (region.study_type is None and not region.not_upper_extremity):
        return None
    evidence = f"{CODED_FIELD} {designator} {code} {region.meaning!r}"
    return ImageVerdict(region.study_type, region.not_upper_extremity, evidence)


def classify_image(facts: Mapping[str, str | None], vocabulary: Vocabulary) -> ImageVerdict:
    """Decide one image's study type from its coded anatomy and its descriptive fields.

    ``facts`` maps the field names of ``vocabulary.fields`` to the image's values (None or
    missing when the image has none); AnatomicRegionSequence's value is the stored code."""
    fallback: ImageVerdict | None = None
    for name in vocabulary.fields:
        value = facts.get(name) or ""
        if name == CODED_FIELD:
            verdict = classify_code(value, vocabulary.anatomy) if value else None
            if verdict is not None:
                return verdict
            continue
        text = normalise(value)
        if not text:
            continue
        evidence = f"{name} {_shorten(value)!r}"
        hits = {
            study_type: min(pos)
            for study_type, terms in vocabulary.study_types.items()
            if (pos := _positions(text, terms))
        }
        other = bool(_positions(text, vocabulary.not_upper_extremity))
        if len(hits) == 1 and not other:
            return ImageVerdict(next(iter(hits)), False, evidence)
        if not hits and other:
            return ImageVerdict(None, True, evidence)
        if hits and fallback is None:
            fallback = ImageVerdict(min(hits, key=lambda t: hits[t]), False, evidence)
    if fallback is not None:
        return fallback
    return ImageVerdict(None, False, "")


def decide_eligibility(
    images: Sequence[Mapping[str, str | None]], vocabulary: Vocabulary, other_objects: int = 0
) -> tuple[Eligibility, list[ImageVerdict]]:
    """Decide a study's eligibility and type from its CR/DX images' facts (see classify_image)."""
    verdicts = [classify_image(facts, vocabulary) for facts in images]
    if not images:
        reason = "no CR or DX image in the study"
        if other_objects:
            reason += f" ({other_objects} other object{'s' if other_objects != 1 else ''} ignored)"
        return Eligibility(False, None, reason), verdicts
    counts = Counter(v.study_type for v in verdicts if v.study_type)
    if not counts:
        others = [v for v in verdicts if v.other_body_part]
        if others:
            return Eligibility(
                False, None, f"not an upper-extremity study ({others[0].evidence})"
            ), verdicts
        fields = ", ".join(vocabulary.fields)
        reason = f"study type not recognised from {fields}"
        unknown = next(
            (
                coded
                for facts in images
                if (coded := facts.get(CODED_FIELD))
                and vocabulary.anatomy.region(*coded.split(":", 1)) is None
            ),
            None,
        )
        if unknown is not None:
            scheme, code = unknown.split(":", 1)
            reason += f" ({CODED_FIELD} {scheme} {code} is not in dicom_profiles/anatomy.toml)"
        return Eligibility(False, None, reason), verdicts
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        tied = ", ".join(f"{t} ({n})" for t, n in ranked if n == ranked[0][1])
        return Eligibility(False, None, f"ambiguous study type: {tied} images"), verdicts
    study_type = ranked[0][0]
    used = counts[study_type]
    reason = f"{study_type}: {used} of {len(images)} image{'s' if len(images) != 1 else ''}"
    if used < len(images):
        reason += f" ({len(images) - used} of another or unknown body part not analysed)"
    return Eligibility(True, study_type, reason), verdicts


def _shorten(value: str, limit: int = 40) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
