"""Coded anatomy (AnatomicRegionSequence): the code table in dicom_profiles/anatomy.toml, checked
against pydicom's and highdicom's copies of DICOM PS3.16, and the eligibility rules it feeds."""

from __future__ import annotations

import json
import tempfile
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts
from pydicom.sr._snomed_dict import mapping
from pydicom.tag import Tag

from node.complete.eligibility import classify_code, classify_image, decide_eligibility
from node.errors import ProfileError
from node.profiles import (
    CODED_FIELD,
    MAX_CODED_REGION,
    TEXT_FIELDS,
    Vocabulary,
    coded_region,
    load_vocabulary,
)
from node.receive.headers import anatomic_region, read_header
from tests.support.factory import make_radiograph, write

HEADINGS = ("no_study_type", "not_upper_extremity")


def anatomy_file() -> dict[str, Any]:
    return tomllib.loads((resources.files("dicom_profiles") / "anatomy.toml").read_text())


def entries() -> list[tuple[str, dict[str, str]]]:
    """Every code entry of anatomy.toml with its heading ("study_type.hand", "no_study_type", ...)."""
    data = anatomy_file()
    found = [
        (f"study_type.{name}", entry)
        for name, table in data["study_type"].items()
        for entry in table["codes"]
    ]
    return found + [(heading, entry) for heading in HEADINGS for entry in data[heading]["codes"]]


def typed_entries() -> list[tuple[str, dict[str, str]]]:
    return [(h.removeprefix("study_type."), e) for h, e in entries() if h.startswith("study_type.")]


def sct_meanings() -> dict[str, set[str]]:
    """pydicom's SNOMED CT concepts (PS3.16): concept ID -> its meanings (one concept can be
    listed under several keywords)."""
    meanings: dict[str, set[str]] = {}
    for by_code in concepts["SCT"].values():
        for code, (meaning, _cids) in by_code.items():
            meanings.setdefault(code, set()).add(meaning)
    return meanings


def plain(meaning: str) -> str:
    return meaning.lower().removesuffix(" (body structure)").removesuffix(" structure")


def facts(code: str | None = None, **text: str | None) -> dict[str, str | None]:
    values: dict[str, str | None] = {CODED_FIELD: code}
    values.update({name: text.get(name) for name in TEXT_FIELDS})
    return values


# -- the table against PS3.16 -----------------------------------------------------------------


def test_every_code_is_a_ps3_16_concept_with_its_meaning() -> None:
    known = sct_meanings()
    assert len(entries()) > 100
    for heading, entry in entries():
        sct = entry["SCT"]
        assert sct in known, f"{heading}: SCT {sct} is not a SNOMED CT concept in PS3.16"
        assert plain(entry["meaning"]) in {plain(m) for m in known[sct]}, (
            f"{heading}: SCT {sct} is {sorted(known[sct])}, not {entry['meaning']!r}"
        )


def test_every_srt_code_is_the_same_concept_as_its_sct_code() -> None:
    paired = 0
    for heading, entry in entries():
        srt = entry.get("SRT")
        assert mapping["SCT"].get(entry["SCT"]) == srt or (
            srt is None and entry["SCT"] not in mapping["SCT"]
        ), f"{heading}: SCT {entry['SCT']} is SRT {mapping['SCT'].get(entry['SCT'])}, not {srt}"
        if srt is not None:
            assert mapping["SRT"][srt] == entry["SCT"], f"{heading}: SRT {srt}"
            paired += 1
    assert paired > 100


def test_every_code_of_cid_4031_is_classified_exactly_once() -> None:
    cid_4031 = {code for keyword in cid_concepts[4031]["SCT"] for code in concepts["SCT"][keyword]}
    listed = [entry["SCT"] for _heading, entry in entries()]
    assert len(cid_4031) > 100
    assert cid_4031 - set(listed) == set()
    assert len(listed) == len(set(listed))


def test_codes_decide_like_the_annex_l_defined_terms_they_stand_for(vocabulary: Vocabulary) -> None:
    """PS3.16 Annex L maps each BodyPartExamined defined term to a code (highdicom's copy). A
    term and its code must name the same MURA type, and a term the vocabulary excludes must have
    an excluded code."""
    annex_l = json.loads(
        (resources.files("highdicom") / "_standard" / "anatomic_regions.json").read_text()
    )
    assert annex_l["FOREARM"][:2] == ["SCT", "14975008"] and len(annex_l) > 300
    typed = 0
    for term, (scheme, code, _meaning, _laterality) in annex_l.items():
        by_text = classify_image({"BodyPartExamined": term}, vocabulary)
        by_code = classify_code(f"{scheme}:{code}", vocabulary.anatomy)
        assert (by_code.study_type if by_code else None) == by_text.study_type, term
        if by_text.other_body_part:
            assert by_code is not None and by_code.other_body_part, f"{term}: {scheme} {code}"
        typed += by_text.study_type is not None
    assert typed == 9  # ELBOW FINGER FOREARM HAND HUMERUS RADIUSULNA SHOULDER THUMB WRIST


# -- what a code decides ----------------------------------------------------------------------


@pytest.mark.parametrize(("study_type", "entry"), typed_entries())
def test_every_study_type_code_decides_its_type_in_both_schemes(
    vocabulary: Vocabulary, study_type: str, entry: dict[str, str]
) -> None:
    coded = [f"SCT:{entry['SCT']}"]
    if "SRT" in entry:
        coded += [f"{scheme}:{entry['SRT']}" for scheme in ("SRT", "SNM3", "99SDM", "srt")]
    for value in coded:
        verdict = classify_image(facts(value), vocabulary)
        assert (verdict.study_type, verdict.other_body_part) == (study_type, False), value


def test_every_mura_type_has_a_sct_and_a_srt_code() -> None:
    by_type: dict[str, set[str]] = {}
    for study_type, entry in typed_entries():
        by_type.setdefault(study_type, set()).update({"SCT"} | ({"SRT"} & set(entry)))
    assert by_type == {
        t: {"SCT", "SRT"}
        for t in ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist")
    }


@pytest.mark.parametrize(
    ("coded", "evidence"),
    [
        ("SCT:816094009", "AnatomicRegionSequence SCT 816094009 'Chest'"),
        ("SCT:51185008", "AnatomicRegionSequence SCT 51185008 'Thoracic structure'"),
        ("SRT:T-D3000", "AnatomicRegionSequence SRT T-D3000 'Thoracic structure'"),
        ("SCT:72696002", "AnatomicRegionSequence SCT 72696002 'Knee'"),
        ("SNM3:T-D9700", "AnatomicRegionSequence SNM3 T-D9700 'Foot'"),
    ],
)
def test_excluded_codes_decide_not_eligible(
    vocabulary: Vocabulary, coded: str, evidence: str
) -> None:
    verdict = classify_image(facts(coded), vocabulary)
    assert (verdict.study_type, verdict.other_body_part, verdict.evidence) == (None, True, evidence)
    result, _ = decide_eligibility([facts(coded)], vocabulary)
    assert result.reason == f"not an upper-extremity study ({evidence})"


@pytest.mark.parametrize(
    "coded",
    [
        "SCT:53120007",  # Upper limb
        "SRT:T-D8000",  # Upper limb
        "SCT:40983000",  # Upper arm (SNOMED-RT "Arm")
        "SCT:66019005",  # Extremity
        "SCT:38266002",  # Entire body
        "SCT:51299004",  # Clavicle
        "SCT:123037004",  # Body structure: a concept the table does not list
        "LN:14975008",  # a scheme the table does not list
        "99XYZ:T-D8500",
        "SCT:",  # malformed stored values
        ":14975008",
        "SCT",
    ],
)
def test_codes_without_a_type_let_the_text_decide(vocabulary: Vocabulary, coded: str) -> None:
    assert classify_code(coded, vocabulary.anatomy) is None
    alone = classify_image(facts(coded), vocabulary)
    assert (alone.study_type, alone.other_body_part, alone.evidence) == (None, False, "")
    with_text = classify_image(facts(coded, ProtocolName="PA WRIST"), vocabulary)
    assert (with_text.study_type, with_text.evidence) == ("wrist", "ProtocolName 'PA WRIST'")


def test_a_code_outranks_the_text(vocabulary: Vocabulary) -> None:
    forearm_but_says_hand = facts("SCT:14975008", BodyPartExamined="HAND", StudyDescription="HAND")
    assert classify_image(forearm_but_says_hand, vocabulary).study_type == "forearm"
    chest_but_says_hand = classify_image(
        facts("SCT:816094009", BodyPartExamined="HAND"), vocabulary
    )
    assert (chest_but_says_hand.study_type, chest_but_says_hand.other_body_part) == (None, True)
    hand_but_says_chest = classify_image(
        facts("SCT:85562004", BodyPartExamined="CHEST"), vocabulary
    )
    assert (hand_but_says_chest.study_type, hand_but_says_chest.other_body_part) == ("hand", False)


def test_study_of_coded_images(vocabulary: Vocabulary) -> None:
    images = [facts("SCT:14975008"), facts("SRT:T-D8500"), facts(None, BodyPartExamined="HAND")]
    result, verdicts = decide_eligibility(images, vocabulary)
    assert (result.eligible, result.study_type) == (True, "forearm")
    assert (
        result.reason == "forearm: 2 of 3 images (1 of another or unknown body part not analysed)"
    )
    assert verdicts[0].evidence == "AnatomicRegionSequence SCT 14975008 'Forearm'"


def test_unrecognised_names_every_field(vocabulary: Vocabulary) -> None:
    result, _ = decide_eligibility([facts("SCT:53120007", SeriesDescription="AP")], vocabulary)
    assert result.reason == (
        "study type not recognised from AnatomicRegionSequence, BodyPartExamined, ProtocolName, "
        "SeriesDescription, StudyDescription"
    )


def test_an_unknown_code_is_named_in_the_reason(vocabulary: Vocabulary) -> None:
    # SCT 85151006 "Structure of left hand": a lateralised concept outside CID 4031.
    result, _ = decide_eligibility([facts("SCT:85151006")], vocabulary)
    assert result.reason.endswith(
        "(AnatomicRegionSequence SCT 85151006 is not in dicom_profiles/anatomy.toml)"
    )


@pytest.mark.parametrize(
    "coded", ["SNOMED-CT:85562004", "snomedct:85562004", "SRT:t-d8700", "99SDM:t-d8700"]
)
def test_common_variants_of_schemes_and_srt_codes_are_read(
    vocabulary: Vocabulary, coded: str
) -> None:
    result, _ = decide_eligibility([facts(coded)], vocabulary)
    assert (result.eligible, result.study_type) == (True, "hand")


def _all_terms(vocabulary: Vocabulary) -> list[str]:
    terms = [t for ts in vocabulary.study_types.values() for t in ts]
    return terms + list(vocabulary.not_upper_extremity)


VOCABULARY = load_vocabulary()
TYPED = sorted(
    (key, region.study_type)
    for key, region in VOCABULARY.anatomy.regions.items()
    if region.study_type is not None
)
UNDECIDED = sorted(
    key
    for key, region in VOCABULARY.anatomy.regions.items()
    if region.study_type is None and not region.not_upper_extremity
)
DESIGNATORS = {"SCT": ["SCT", "sct"], "SRT": ["SRT", "SNM3", "99SDM", "snm3"]}
TEXT = st.one_of(
    st.none(),
    st.text(max_size=64),
    st.lists(st.sampled_from(_all_terms(VOCABULARY)), max_size=3).map(" ".join),
)
TEXTS = st.fixed_dictionaries({name: TEXT for name in TEXT_FIELDS})


@given(typed=st.sampled_from(TYPED), texts=TEXTS, pick=st.integers(0, 3))
def test_any_typed_code_decides_its_type_whatever_the_text_says(
    typed: tuple[tuple[str, str], str], texts: dict[str, str | None], pick: int
) -> None:
    (scheme, code), study_type = typed
    designator = DESIGNATORS[scheme][pick % len(DESIGNATORS[scheme])]
    verdict = classify_image({CODED_FIELD: f"{designator}:{code}", **texts}, VOCABULARY)
    assert (verdict.study_type, verdict.other_body_part) == (study_type, False)
    assert verdict.evidence.startswith(f"AnatomicRegionSequence {designator} {code} '")


@given(
    coded=st.one_of(
        st.sampled_from(UNDECIDED).map(":".join),
        st.builds(coded_region, st.text(max_size=8), st.text(max_size=20)),
    ),
    texts=TEXTS,
)
def test_a_code_that_decides_nothing_leaves_the_text_verdict_unchanged(
    coded: str | None, texts: dict[str, str | None]
) -> None:
    if coded is not None and classify_code(coded, VOCABULARY.anatomy) is not None:
        return  # a random code that happens to be in the table (checked above)
    without = classify_image({CODED_FIELD: None, **texts}, VOCABULARY)
    assert classify_image({CODED_FIELD: coded, **texts}, VOCABULARY) == without


# -- reading the code at ingest ---------------------------------------------------------------


def region_item(**values: str) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([region_item(CodeValue="14975008", CodingSchemeDesignator="SCT")], "SCT:14975008"),
        ([region_item(CodeValue=" T-D8500 ", CodingSchemeDesignator="SRT ")], "SRT:T-D8500"),
        ([region_item(LongCodeValue="14975008", CodingSchemeDesignator="SCT")], "SCT:14975008"),
        (
            [
                region_item(CodeValue="85562004", CodingSchemeDesignator="SCT"),
                region_item(CodeValue="14975008", CodingSchemeDesignator="SCT"),
            ],
            "SCT:85562004",
        ),
        ([region_item(CodeValue="14975008")], None),  # no scheme
        ([region_item(CodeValue="", CodingSchemeDesignator="SCT")], None),
        ([region_item(CodeValue="   ", CodingSchemeDesignator="SCT")], None),
        ([region_item(CodingSchemeDesignator="SCT", CodeMeaning="Forearm")], None),
        ([region_item(LongCodeValue="1" * 70, CodingSchemeDesignator="SCT")], None),
        ([region_item(CodeValue="14975008", CodingSchemeDesignator="S:T")], None),
        ([region_item(CodeValue="149\\75008", CodingSchemeDesignator="SCT")], None),
        ([], None),
    ],
)
def test_anatomic_region_of_a_data_set(items: list[Dataset], expected: str | None) -> None:
    ds = Dataset()
    ds.AnatomicRegionSequence = items
    assert anatomic_region(ds) == expected


def test_anatomic_region_absent_or_not_a_sequence() -> None:
    ds = Dataset()
    assert anatomic_region(ds) is None
    ds.add_new(0x00082218, "LO", "FOREARM")
    assert anatomic_region(ds) is None
    ds[0x00082218].value = None
    assert anatomic_region(ds) is None


VALUES = st.one_of(st.none(), st.text(max_size=80), st.lists(st.text(max_size=8), max_size=3))


@pytest.mark.filterwarnings("ignore:The value length")  # pydicom: an SH over 16 characters
@given(designator=VALUES, code=VALUES, long_code=VALUES)
def test_anatomic_region_never_raises(designator: Any, code: Any, long_code: Any) -> None:
    item = Dataset()
    for keyword, value in (
        ("CodingSchemeDesignator", designator),
        ("CodeValue", code),
        ("LongCodeValue", long_code),
    ):
        if value is not None:
            setattr(item, keyword, value)
    ds = Dataset()
    ds.AnatomicRegionSequence = [item]
    coded = anatomic_region(ds)
    assert coded is None or (len(coded) <= MAX_CODED_REGION and coded.isascii() and ":" in coded)
    assert coded == coded_region(single(designator), single(code) or single(long_code))


def single(value: Any) -> Any:
    """A one-item list is stored as a single value (VM 1)."""
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def raw_element(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element holding bytes as received, whatever they are."""
    value += b" " * (len(value) % 2)
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the random values
@settings(max_examples=60, deadline=None)
@given(
    designator=st.binary(max_size=24),
    code=st.binary(max_size=80),
    whole=st.one_of(
        st.none(), st.tuples(st.sampled_from(["UN", "LO", "OB"]), st.binary(max_size=48))
    ),
)
def test_raw_codes_in_a_file_never_cost_the_header(
    designator: bytes, code: bytes, whole: tuple[str, bytes] | None
) -> None:
    """Any bytes as the code's scheme and value, or as the whole element under another VR: the
    header still reads (the C-STORE succeeds) and the code is a well-formed one or None."""
    ds = make_radiograph(rows=4, columns=4)
    if whole is None:
        item = Dataset()
        item[0x00080102] = raw_element(0x00080102, "SH", designator)  # type: ignore[assignment]
        item[0x00080100] = raw_element(0x00080100, "SH", code)  # type: ignore[assignment]
        ds.AnatomicRegionSequence = [item]
    else:
        ds[0x00082218] = raw_element(0x00082218, *whole)  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "coded.dcm"
        config.replace_un_with_known_vr = False  # write the UN bytes as they are
        try:
            write(ds, path)
        finally:
            config.replace_un_with_known_vr = True
        header = read_header(path)
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.anatomic_region is None or (
        len(header.anatomic_region) <= MAX_CODED_REGION
        and header.anatomic_region.isascii()
        and header.anatomic_region.partition(":")[2]
    )


# -- a bad anatomy.toml is refused with the entry named -----------------------------------------


def profile_directory(tmp_path: Path, anatomy: str) -> Path:
    source = resources.files("dicom_profiles")
    (tmp_path / "study_types.toml").write_text((source / "study_types.toml").read_text())
    (tmp_path / "anatomy.toml").write_text(anatomy)
    return tmp_path


def shipped_anatomy() -> str:
    return (resources.files("dicom_profiles") / "anatomy.toml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '{ SCT = "14975008", SRT',
            '{ SCT = "14975080", SRT',
            r"study_type.forearm.codes\[0\].SCT: not a SNOMED CT concept ID: '14975080'",
        ),
        (
            'SRT = "T-D8500"',
            'SRT = "TD8500"',
            r"study_type.forearm.codes\[0\].SRT: not a SNOMED-RT code",
        ),
        (
            '{ SCT = "85562004", SRT = "T-D8700", meaning = "Hand" }',
            '{ SCT = "14975008", meaning = "Hand" }',
            r"study_type.hand.codes\[0\]: SCT 14975008 is also in anatomy.toml: "
            r"study_type.forearm.codes\[0\]",
        ),
        (
            'meaning = "Thumb" }',
            'meaning = "Thumb", side = "left" }',
            r"study_type.finger.codes\[1\]: unknown key\(s\) side",
        ),
        ('meaning = "Chest" }', 'meaning = "" }', r"not_upper_extremity.codes\[\d+\].meaning"),
        ("[study_type.humerus]", "[study_type.femur]", "study_type: expected a table of"),
        ('SRT = ["SRT",', 'SRT = ["SCT",', r"schemes.SRT: 'SCT' is empty or listed twice"),
        ("\n[no_study_type]\n", "\n[no_type]\n", "no_study_type: expected a table of codes"),
    ],
)
def test_a_malformed_anatomy_file_is_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = shipped_anatomy()
    assert old in text
    with pytest.raises(ProfileError, match=message):
        load_vocabulary(profile_directory(tmp_path, text.replace(old, new, 1)))


def test_unknown_fields_are_refused(tmp_path: Path) -> None:
    directory = profile_directory(tmp_path, shipped_anatomy())
    vocabulary = (directory / "study_types.toml").read_text()
    (directory / "study_types.toml").write_text(
        vocabulary.replace('"AnatomicRegionSequence",', '"AnatomicRegion",', 1)
    )
    with pytest.raises(ProfileError, match=r"study_types\.toml: fields: each of"):
        load_vocabulary(directory)
