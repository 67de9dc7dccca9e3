from __future__ import annotations

import pytest

from node.complete.eligibility import classify_image, decide_eligibility, normalise
from node.profiles import Vocabulary


def facts(
    body: str | None = None,
    protocol: str | None = None,
    series: str | None = None,
    study: str | None = None,
) -> dict[str, str | None]:
    return {
        "BodyPartExamined": body,
        "ProtocolName": protocol,
        "SeriesDescription": series,
        "StudyDescription": study,
    }


def test_normalise() -> None:
    assert normalise("Épaule g.  face") == "EPAULE G FACE"
    assert normalise("Handgelenk/li") == "HANDGELENK LI"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (facts(body="HAND"), "hand"),
        (facts(body="WRIST"), "wrist"),
        (facts(body="ELBOW"), "elbow"),
        (facts(body="SHOULDER"), "shoulder"),
        (facts(body="HUMERUS"), "humerus"),
        (facts(body="FOREARM"), "forearm"),
        (facts(body="FINGER"), "finger"),
        (facts(study="XR HAND 3+ VIEWS RIGHT"), "hand"),
        (facts(study="Handgelenk links in 2 Ebenen"), "wrist"),  # de: not "hand"
        (facts(study="Épaule droite"), "shoulder"),  # fr
        (facts(series="Muñeca PA"), "wrist"),  # es
        (facts(series="Gomito LL"), "elbow"),  # it
        (facts(protocol="Onderarm AP"), "forearm"),  # nl
        (facts(study="Daumen seitlich"), "finger"),  # de
        (facts(body="EXTREMITY", series="PA WRIST"), "wrist"),  # unspecified, next field decides
        (facts(body="ARM", protocol="Humerus AP"), "humerus"),
        (facts(body="hand", study="WRIST"), "hand"),  # BodyPartExamined comes first
        (facts(series="HAND AND WRIST"), "hand"),  # several: leftmost when nothing else decides
        (facts(series="HAND AND WRIST", study="Wrist trauma"), "wrist"),
    ],
)
def test_image_type(vocabulary: Vocabulary, image: dict[str, str | None], expected: str) -> None:
    assert classify_image(image, vocabulary).study_type == expected


def test_other_body_part_decides_not_eligible(vocabulary: Vocabulary) -> None:
    verdict = classify_image(
        facts(body="EXTREMITY", study="Non-ossifying fibroma of distal tibia"), vocabulary
    )
    assert verdict.study_type is None
    assert verdict.other_body_part
    assert verdict.evidence == "StudyDescription 'Non-ossifying fibroma of distal tibia'"


def test_study_type_by_majority(vocabulary: Vocabulary) -> None:
    result, _ = decide_eligibility(
        [facts(body="HAND"), facts(body="HAND"), facts(body="WRIST")], vocabulary
    )
    assert (result.eligible, result.study_type) == (True, "hand")
    assert result.reason == "hand: 2 of 3 images (1 of another or unknown body part not analysed)"


def test_tie_is_not_eligible(vocabulary: Vocabulary) -> None:
    result, _ = decide_eligibility([facts(body="HAND"), facts(body="WRIST")], vocabulary)
    assert not result.eligible
    assert result.reason == "ambiguous study type: hand (1), wrist (1) images"


def test_reasons_for_ineligible_studies(vocabulary: Vocabulary) -> None:
    chest, _ = decide_eligibility([facts(body="CHEST")], vocabulary)
    assert chest.reason == "not an upper-extremity study (BodyPartExamined 'CHEST')"
    unknown, _ = decide_eligibility([facts(series="AP")], vocabulary)
    assert unknown.reason.startswith(
        "study type not recognised from AnatomicRegionSequence, BodyPartExamined"
    )
    empty, _ = decide_eligibility([], vocabulary, other_objects=2)
    assert empty.reason == "no CR or DX image in the study (2 other objects ignored)"
