"""The SR document: highdicom given the root container alone makes the object it makes from the
whole content tree (node/results/sr.py `document`)."""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.results.sanitise import clean_source
from node.results.sr import _ROOT, build_sr
from tests.support.factory import make_radiograph
from tests.support.results import ALGORITHM, IDENTITY, result


def study(n: int) -> list[Dataset]:
    uid = generate_uid()
    return [
        clean_source(make_radiograph(study_uid=uid, body_part="WRIST", seed=i))[0] for i in range(n)
    ]


@pytest.mark.parametrize("with_predecessor", [False, True])
def test_sr_document_is_highdicoms_own_element_for_element(with_predecessor: bool) -> None:
    """`document` hands highdicom the root container without its items; the result must be the
    object highdicom's constructor makes from the whole tree (times of creation apart)."""
    sources = study(3)
    first = build_sr(
        sources,
        result((0.2, 0.4, 0.9)),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    predecessor = first if with_predecessor else None
    sr = build_sr(
        sources,
        result((0.7, 0.1, 0.8), study_type="wrist"),
        ALGORITHM,
        IDENTITY,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        predecessor=predecessor,
    )
    root = Dataset()
    for keyword in (*_ROOT, "ContentSequence"):
        if keyword in sr:
            root[keyword] = sr[keyword]
    whole = hd.sr.ComprehensiveSR(
        evidence=sources,
        content=root,
        series_instance_uid=sr.SeriesInstanceUID,
        series_number=990,
        sop_instance_uid=sr.SOPInstanceUID,
        instance_number=1,
        manufacturer=IDENTITY.manufacturer,
        is_complete=True,
        previous_versions=[predecessor] if predecessor is not None else None,
    )
    whole.SeriesDescription = sr.SeriesDescription
    whole.ManufacturerModelName = IDENTITY.model_name
    whole.SoftwareVersions = IDENTITY.software_version
    created = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")
    ours, theirs = sr.to_json_dict(), whole.to_json_dict()
    for keyword in created:
        tag = f"{tag_for_keyword(keyword):08X}"
        ours.pop(tag), theirs.pop(tag)
    equipment, when = f"{tag_for_keyword('ContributingEquipmentSequence'):08X}", "0018A002"
    for item in (*ours[equipment]["Value"], *theirs[equipment]["Value"]):
        item.pop(when)  # ContributionDateTime
    assert ours == theirs
    assert "CurrentRequestedProcedureEvidenceSequence" in sr
    assert ("PredecessorDocumentsSequence" in sr) == with_predecessor
