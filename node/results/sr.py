"""The study's Comprehensive SR (88.33): a TID 1500 measurement report written with highdicom.

Content tree (codes checked with dciodvfy and dsrdump, see ../shared DICOM notes in docs/results.md):

- Imaging Measurement Report, language, observation context: the node as a device observer
  (UID, AE title, manufacturer, model, software version); procedure reported: Imaging procedure.
- Measurement group "Study": finding type Abnormal (SCT 263654008) or Normal (SCT 17621005), the
  finding site of the study type, algorithm identification (TID 4019: name, version, parameters =
  checkpoint names, versions and SHA-256, threshold), Probability (DCM 122157, unit "no units"), and
  every source image.
- One measurement group per image: its finding site, algorithm, probability and source image.
- The image library names every source image. When the engine is untrained, the algorithm name says
  "(UNTRAINED)" and the study group carries a TEXT comment saying the result is meaningless.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from highdicom.sr.value_types import ContentSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.engine import StudyResult
from node.results.identity import AlgorithmInfo, NodeIdentity

ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = hd.sr.CodedConcept("17621005", "SCT", "Normal")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
FINDING_SITES = {
    "shoulder": hd.sr.CodedConcept("16982005", "SCT", "Shoulder region structure"),
    "humerus": hd.sr.CodedConcept("85050009", "SCT", "Bone structure of humerus"),
    "elbow": hd.sr.CodedConcept("16953009", "SCT", "Elbow joint structure"),
    "forearm": hd.sr.CodedConcept("14975008", "SCT", "Forearm structure"),
    "wrist": hd.sr.CodedConcept("74670003", "SCT", "Wrist joint structure"),
    "hand": hd.sr.CodedConcept("85562004", "SCT", "Hand structure"),
    "finger": hd.sr.CodedConcept("7569003", "SCT", "Finger structure"),
}
SR_SERIES_DESCRIPTION = "AI RESULT mura-node MSK abnormality"
UNTRAINED_TEXT = "UNTRAINED MODEL: random weights, this result is meaningless and must not be used"


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
    `node.results.sanitise.clean_source`, in result order (the first gives patient and study)."""
    if len(sources) != len(result.images):
        raise ValueError("one source image per image result is needed")
    evidence = list(sources)
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
    references = [
        hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        for ds in sources
    ]
    study_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Study"),
        finding_type=ABNORMAL if result.abnormal else NORMAL,
        algorithm_id=algorithm_id,
        finding_sites=site,
        measurements=[_probability(result.probability)],
        source_images=references,
    )
    image_groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=f"Image {index + 1}"
            ),
            algorithm_id=algorithm_id,
            finding_sites=site,
            measurements=[_probability(image.probability)],
            source_images=[reference],
        )
        for index, (image, reference) in enumerate(zip(result.images, references, strict=True))
    ]
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
        imaging_measurements=[study_group, *image_groups],
    )
    _insert_before_measurements(report, _image_library(evidence))
    if algorithm.untrained:
        _add_comment(report, UNTRAINED_TEXT)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=identity.manufacturer,
        is_complete=True,
        previous_versions=[predecessor] if predecessor is not None else None,
    )
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.ManufacturerModelName = identity.model_name
    sr.SoftwareVersions = identity.software_version
    return sr


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
            and existing.ConceptNameCodeSequence[0].CodeValue == "126010"
        ):
            content.insert(index, item)
            return
    content.append(item)


def _probability(value: float) -> hd.sr.Measurement:
    """The probability; the group it belongs to names the algorithm (TID 1501)."""
    return hd.sr.Measurement(name=PROBABILITY, value=round(float(value), 6), unit=NO_UNITS)


def _add_comment(report: hd.sr.MeasurementReport, text: str) -> None:
    """A TEXT item in the study measurement group: visible in every SR viewer's tree."""
    root = report[0]
    for item in root.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010":
            group = item.ContentSequence[0]  # the study group comes first
            group.ContentSequence.append(
                hd.sr.TextContentItem(name=COMMENT, value=text, relationship_type="CONTAINS")
            )
            return
    raise ValueError("measurement report has no Imaging Measurements container")
