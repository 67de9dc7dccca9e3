"""The study's Comprehensive SR (88.33): a TID 1500 measurement report written with highdicom.

Content tree (checked with dciodvfy, dsrdump and pixelmed's DicomSRValidator; why it has this
shape, and what OHIF 3 and dcmtk's dsr2html show of it: docs/results.md):

- Imaging Measurement Report, language, observation context: the node as a device observer
  (UID, AE title, manufacturer, model); procedure reported: Imaging procedure; image library.
- Imaging Measurements, two groups per image "Image N" that share one Tracking Unique Identifier:
  - TID 1410 planar ROI: the study's finding (Abnormal SCT 263654008 or Normal SCT 17621005), the
    finding site of the study type, the algorithm (TID 4019: name, version, parameters =
    checkpoint names, versions and SHA-256, threshold) and the Image Region where the class
    activation map is strongest (`node.results.region`): a closed POLYLINE rectangle in the source
    image's pixel coordinates, SELECTED FROM that image;
  - TID 1501: the algorithm, the image's Probability (DCM 122157, unit UCUM "1") and the source
    image.
- Qualitative Evaluations (TID 1500 row 12): the study's finding, its probability as TEXT (the
  row takes CODE and TEXT items only) and, for an untrained engine, a Comment saying that the
  result is meaningless; the algorithm name then says "(UNTRAINED)" too.
- Every container is SEPARATE, so that SR renderers label each item with its concept name.
- SeriesDescription states the finding and the probability ("UNTRAINED" first when so): OHIF 3
  shows nothing of an SR outside its measurements but that, in its series list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.sr.value_types import ContentSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.inference.engine import StudyResult
from node.results.identity import AlgorithmInfo, NodeIdentity
from node.results.region import cam_region

ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = hd.sr.CodedConcept("17621005", "SCT", "Normal")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_MEASUREMENTS = "126010"
FINDING_SITES = {
    "shoulder": hd.sr.CodedConcept("16982005", "SCT", "Shoulder region structure"),
    "humerus": hd.sr.CodedConcept("85050009", "SCT", "Bone structure of humerus"),
    "elbow": hd.sr.CodedConcept("16953009", "SCT", "Elbow joint structure"),
    "forearm": hd.sr.CodedConcept("14975008", "SCT", "Forearm structure"),
    "wrist": hd.sr.CodedConcept("74670003", "SCT", "Wrist joint structure"),
    "hand": hd.sr.CodedConcept("85562004", "SCT", "Hand structure"),
    "finger": hd.sr.CodedConcept("7569003", "SCT", "Finger structure"),
}
UNTRAINED_TEXT = "UNTRAINED MODEL: random weights, this result is meaningless and must not be used"


@dataclass(frozen=True)
class Summary:
    """What an SR written by `build_sr` says: the study's finding ("Abnormal" or "Normal"), its
    probability, the finding site's meaning (None without one), and each image's probability in
    "Image N" order."""

    finding: str
    probability: float
    finding_site: str | None
    image_probabilities: tuple[float, ...]


def build_sr(
    sources: Sequence[Dataset],
    result: StudyResult,
    algorithm: AlgorithmInfo,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 990,
    predecessor: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The SR for one study; ``sources`` are the analysed images' headers as cleaned by
    `node.results.sanitise.clean_source` (Rows and Columns give each region's geometry), in
    result order: "Image N" is ``sources[N - 1]``, and the first gives patient and study.
    Raises ValueError when ``sources`` and ``result.images`` differ in length."""
    if len(sources) != len(result.images):
        raise ValueError("one source image per image result is needed")
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.display_name[:64],
        version=algorithm.version[:64],
        parameters=[*algorithm.checkpoints, f"threshold {result.threshold:g}"],
    )
    site = (
        [hd.sr.FindingSite(FINDING_SITES[result.study_type])]
        if result.study_type in FINDING_SITES
        else None
    )
    finding = ABNORMAL if result.abnormal else NORMAL
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for index, (ds, image) in enumerate(zip(sources, result.images, strict=True)):
        # One finding, two groups: the region (TID 1410 holds no NUM that OHIF can hydrate) and
        # the probability (TID 1501); the shared UID makes them one measurement in OHIF.
        uid, name = generate_uid(), f"Image {index + 1}"
        region = cam_region(image.cam, int(ds.Rows), int(ds.Columns))
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=name),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=region.polyline(),
                    source_image=hd.sr.SourceImageForRegion(
                        str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                    ),
                ),
                finding_type=finding,
                algorithm_id=algorithm_id,
                finding_sites=site,
            )
        )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=name),
                algorithm_id=algorithm_id,
                measurements=[_probability(image.probability)],
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup(
                        str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid,
            name=identity.ae_title,
            manufacturer_name=identity.manufacturer,
            model_name=identity.model_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    _insert_before_measurements(report, _image_library(sources))
    report[0].ContentSequence.append(
        _qualitative_evaluations(finding, result.probability, algorithm.untrained)
    )
    _separate(report[0])
    sr = document(
        sources,
        report[0],
        identity,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        predecessor=predecessor,
    )
    sr.SeriesDescription = series_description(result, algorithm.untrained)
    return sr


# The root container's own attributes: all of it but its items.
_ROOT = ("ConceptNameCodeSequence", "ValueType", "ContinuityOfContent", "ContentTemplateSequence")


def document(
    sources: Sequence[Dataset],
    root: Dataset,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    predecessor: Dataset | None,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR document (patient, study, series, SR Document General with
    CurrentRequestedProcedureEvidenceSequence listing ``sources``, PredecessorDocumentsSequence
    naming ``predecessor``) around ``root``, the content tree's root container, whose items must
    reference no instance but ``sources``.

    highdicom builds the document around the root container without its items, which it then
    receives as they are: given a study's whole tree, highdicom's constructor deep-copies it,
    parses the copy back into content items and searches it for referenced instances, which costs
    more than building the tree (the items are already highdicom's, checked as they were made;
    every instance they reference is a source, listed as evidence all the same). The object is
    the same, element for element (tests/integration/test_sr_document.py), but its ``content``
    property holds the root alone: read a written SR back with ``ComprehensiveSR.from_dataset``."""
    shell = Dataset()
    for keyword in _ROOT:
        if keyword in root:
            shell[keyword] = root[keyword]
    shell.ContentSequence = []
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=shell,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=identity.manufacturer,
        is_complete=True,
        previous_versions=[predecessor] if predecessor is not None else None,
    )
    sr.ContentSequence = root.ContentSequence
    sr.ManufacturerModelName = identity.model_name
    sr.SoftwareVersions = identity.software_version
    return sr


def read_summary(sr: Dataset) -> Summary:
    """The `Summary` of an SR that `build_sr` wrote (read with highdicom). Raises ValueError when
    ``sr`` lacks its Qualitative Evaluations or their finding and probability."""
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    evaluations = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
    ]
    if not evaluations:
        raise ValueError("the SR has no Qualitative Evaluations")
    items = {
        (item.ValueType, item.ConceptNameCodeSequence[0].CodeValue): item
        for item in evaluations[0].ContentSequence
    }
    finding, probability = (
        items.get(("CODE", FINDING.value)),
        items.get(("TEXT", PROBABILITY.value)),
    )
    if finding is None or probability is None:
        raise ValueError("the SR's Qualitative Evaluations lack the finding or the probability")
    regions = report.content.get_planar_roi_measurement_groups()  # type: ignore[attr-defined]
    sites = regions[0].finding_sites if regions else []
    groups = report.content.get_image_measurement_groups()  # type: ignore[attr-defined]
    return Summary(
        finding=str(finding.ConceptCodeSequence[0].CodeMeaning),
        probability=float(probability.TextValue),
        finding_site=str(sites[0].value.meaning) if sites else None,
        image_probabilities=tuple(float(g.get_measurements()[0].value) for g in groups),
    )


def series_description(result: StudyResult, untrained: bool) -> str:
    """The SR's SeriesDescription (LO, at most 64 characters), e.g. "AI RESULT: ABNORMAL,
    probability 0.73 (mura-node)", with "UNTRAINED " first for an untrained engine."""
    finding = "ABNORMAL" if result.abnormal else "NORMAL"
    text = f"AI RESULT: {finding}, probability {result.probability:.2f} (mura-node)"
    return f"UNTRAINED {text}" if untrained else text


def _qualitative_evaluations(
    finding: hd.sr.CodedConcept, probability: float, untrained: bool
) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations: the study's finding and probability, and the warning
    for an untrained engine; outside Imaging Measurements, where OHIF 3 reads every group as a
    measurement on an image region."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"
    )
    container.ContentSequence = ContentSequence(
        [
            hd.sr.CodeContentItem(name=FINDING, value=finding, relationship_type="CONTAINS"),
            hd.sr.TextContentItem(
                name=PROBABILITY, value=_decimal(probability), relationship_type="CONTAINS"
            ),
        ]
    )
    if untrained:
        container.ContentSequence.append(
            hd.sr.TextContentItem(name=COMMENT, value=UNTRAINED_TEXT, relationship_type="CONTAINS")
        )
    return container


class _Descriptors(hd.sr.ImageLibraryEntryDescriptors):
    """TID 1602/1603 descriptors that leave out what the image does not say.

    highdicom's own require ImagerPixelSpacing and a two-valued PatientOrientation, which a CR may
    lack (both are optional there); the node must describe such images too, without inventing
    values. The dataset is a cleaned source: what it has is valid."""

    def _generate_projection_radiography_descriptors(
        self, dataset: Dataset
    ) -> list[hd.sr.ContentItem]:
        items: list[hd.sr.ContentItem] = []
        orientation = dataset.get("PatientOrientation")
        if orientation:
            for name, value in (
                (codes.DCM.PatientOrientationRow, orientation[0]),
                (codes.DCM.PatientOrientationColumn, orientation[1]),
            ):
                items.append(
                    hd.sr.TextContentItem(
                        name=name, value=value, relationship_type="HAS ACQ CONTEXT"
                    )
                )
        spacing = dataset.get("ImagerPixelSpacing")
        if spacing:
            for name, value in (
                (codes.DCM.HorizontalPixelSpacing, spacing[1]),
                (codes.DCM.VerticalPixelSpacing, spacing[0]),
            ):
                items.append(
                    hd.sr.NumContentItem(
                        name=name,
                        value=float(value),
                        unit=codes.UCUM.Millimeter,
                        relationship_type="HAS ACQ CONTEXT",
                    )
                )
        return items


def _image_library(datasets: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group per frame of reference, one entry per source image."""
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type="CONTAINS")
    library.ContentSequence = ContentSequence()
    groups: dict[str | None, list[hd.sr.ImageContentItem]] = {}
    for ds in datasets:
        image = hd.sr.ImageContentItem(
            name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            relationship_type="CONTAINS",
        )
        image.ContentSequence = ContentSequence(list(_Descriptors(ds)))  # type: ignore[arg-type]
        groups.setdefault(ds.get("FrameOfReferenceUID"), []).append(image)
    for frame_of_reference, images in groups.items():
        group = hd.sr.ContainerContentItem(
            name=codes.DCM.ImageLibraryGroup, relationship_type="CONTAINS"
        )
        group.ContentSequence = ContentSequence()
        if frame_of_reference:
            group.ContentSequence.append(
                hd.sr.UIDRefContentItem(
                    name=codes.DCM.FrameOfReferenceUID,
                    value=frame_of_reference,
                    relationship_type="HAS ACQ CONTEXT",
                )
            )
        group.ContentSequence.extend(images)
        library.ContentSequence.append(group)
    return library


def _insert_before_measurements(report: hd.sr.MeasurementReport, item: Dataset) -> None:
    content = report[0].ContentSequence
    for index, existing in enumerate(content):
        if (
            existing.ValueType == "CONTAINER"
            and existing.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS
        ):
            content.insert(index, item)
            return
    content.append(item)


def _separate(item: Dataset) -> None:
    """Every container SEPARATE: its items are separate statements, which dcmtk's dsr2html
    renders as "concept name: value" (the items of a CONTINUOUS container as running text)."""
    if "ContinuityOfContent" in item:
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate(child)


def _probability(value: float) -> hd.sr.Measurement:
    """The probability; the group it belongs to names the algorithm (TID 1501)."""
    return hd.sr.Measurement(name=PROBABILITY, value=round(float(value), 6), unit=NO_UNITS)


def _decimal(value: float) -> str:
    """``value`` to 6 decimals without trailing zeros, as the NUMs give it: 0.73 -> "0.73"."""
    return f"{float(value):.6f}".rstrip("0").rstrip(".") or "0"
