"""A Grayscale Softcopy Presentation State per source image: the AI region on the original image.

For destinations that ask for it (``objects = [..., "gsps"]``): a PACS viewer that applies
presentation states draws, over the source radiograph itself, a rectangle around the region where
the class activation map is strongest and a label with the study's finding, the image's
probability and "NOT FOR PRIMARY DIAGNOSIS" ("UNTRAINED MODEL" first when so), on a graphic layer
"AI" (PS3.3 A.33.1; highdicom ``GrayscaleSoftcopyPresentationState``).

The region is the SR's (`node.results.region.cam_region`: the strongest blob of the map, as a
rectangle in the image's pixel coordinates, PS3.3 C.10.5.1.1 PIXEL units); a map that singles out
nothing gets the label without a rectangle.

What the viewer shows under it keeps to the source: the source's RescaleSlope and
RescaleIntercept (Modality LUT) and its first WindowCenter and WindowWidth (Softcopy VOI LUT) when
they are valid numbers, else none (the viewer's default: the full range); Presentation LUT INVERSE
for MONOCHROME1, IDENTITY otherwise, so bone stays white. These are read leniently from the
source header; patient and study come from the cleaned source (node/results/sanitise.py).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from node.results.identity import NodeIdentity, add_study_level
from node.results.region import cam_region
from node.results.sc import NOT_FOR_DIAGNOSIS

GSPS_SERIES_NUMBER = 993
GSPS_SERIES_DESCRIPTION = "AI region mura-node - NOT FOR PRIMARY DIAGNOSIS"
CONTENT_LABEL = "AI_REGION"
LAYER = "AI"


def _number(source: Dataset, keyword: str) -> float | None:
    """The first value of a DS attribute as a finite float, else None; never raises."""
    try:
        value: Any = source.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        number = float(value) if value not in (None, "") else None
    except Exception:
        return None
    return number if number is not None and math.isfinite(number) else None


def label(abnormal: bool, study_type: str | None, probability: float, untrained: bool) -> str:
    """The text shown with the region, e.g. "AI: ABNORMAL wrist study, this image 0.731 - NOT
    FOR PRIMARY DIAGNOSIS"."""
    finding = "ABNORMAL" if abnormal else "NORMAL"
    study = f"{study_type} study" if study_type else "study"
    warning = "UNTRAINED MODEL - " if untrained else ""
    return (
        f"{warning}AI: {finding} {study}, this image {probability:.3f} - strongest activation "
        f"outlined - {NOT_FOR_DIAGNOSIS}"
    )


def build_gsps(
    raw: Dataset,
    source: Dataset,
    cam: np.ndarray,
    text: str,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    created: datetime | None = None,
    series_number: int = GSPS_SERIES_NUMBER,
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """The presentation state of one source image, or None for an image that is not grayscale
    (SamplesPerPixel other than 1: a GSPS cannot apply to it).

    ``raw`` is the source header as received (read leniently for the display attributes),
    ``source`` the same header cleaned by `node.results.sanitise.clean_source`, ``cam`` the raw
    map (h, w), ``text`` the label (`label`)."""
    samples = _number(raw, "SamplesPerPixel")
    if samples not in (None, 1.0):
        return None
    reference = Dataset()
    reference.update(source)
    reference.SamplesPerPixel = 1
    rows, columns = int(source.Rows), int(source.Columns)
    region = cam_region(cam, rows, columns)
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER, order=1, description="AI: region of strongest class activation"
    )
    objects = (
        [
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=region.polyline(),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        ]
        if region.localised
        else []
    )
    caption = hd.pr.TextObject(
        text_value=text[:1024],
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(0.02 * columns, 0.01 * rows, 0.98 * columns, 0.07 * rows),
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[reference],
        graphic_layer=layer,
        graphic_objects=objects or None,
        text_objects=[caption],
    )
    slope, intercept = _number(raw, "RescaleSlope"), _number(raw, "RescaleIntercept")
    modality = (
        hd.ModalityLUTTransformation(rescale_intercept=intercept, rescale_slope=slope)
        if slope is not None and intercept is not None and slope != 0
        else None
    )
    center, width = _number(raw, "WindowCenter"), _number(raw, "WindowWidth")
    voi = (
        [hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=width)]
        if center is not None and width is not None and width > 0
        else None
    )
    photometric = str(raw.get("PhotometricInterpretation", "")).strip()
    shape = (
        hd.PresentationLUTShapeValues.INVERSE
        if photometric == "MONOCHROME1"
        else hd.PresentationLUTShapeValues.IDENTITY
    )
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[reference],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=identity.manufacturer,
        manufacturer_model_name=identity.model_name,
        software_versions=identity.software_version,
        device_serial_number=identity.ae_title,
        content_label=CONTENT_LABEL,
        content_description="AI region and finding, not for primary diagnosis",
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        modality_lut_transformation=modality,
        voi_lut_transformations=voi,
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=shape
        ),
    )
    laterality = str(source.get("ImageLaterality") or source.get("Laterality") or "").strip()
    gsps.Laterality = laterality if laterality in ("L", "R") else ""  # Type 2C
    gsps.SeriesDescription = GSPS_SERIES_DESCRIPTION
    add_study_level(gsps, source, created or datetime.now())
    return gsps
