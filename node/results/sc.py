"""One Secondary Capture per source image: the radiograph with its class activation map in colour,
and what it shows burned into its pixels.

Rendering (`blend_heatmap`): the radiograph as a radiologist sees it (the same windowing and
MONOCHROME1 inversion as the model input, node/inference/imaging.py), scaled so that its longest side is at
most 1024 pixels with the aspect ratio kept; the map is upsampled to that size, its positive part
scaled to [0, 1], and blended in colour only where it exceeds 0.2, with at most 45 % opacity, so the
bone stays visible under the colour and regions without evidence are left untouched.

Annotation (`annotate_heatmap`, node/results/drawing.py): a banner above the radiograph (never over
it) says, in a TrueType font sized to the image, "UNTRAINED MODEL - NOT FOR DIAGNOSIS" when the
engine is untrained, the study's finding and type, this image's probability, the source image's
SeriesNumber, InstanceNumber and ViewPosition, the algorithm's name and version and "NOT FOR
PRIMARY DIAGNOSIS"; a colour scale for the map is drawn below the radiograph. BurnedInAnnotation
is YES (see `build_sc`).

The SC is in a new series ("AI heatmap, not for primary diagnosis"), copies patient and study from
the source image (highdicom ``SCImage.from_ref_dataset``, then
`node.results.identity.add_study_level`), and adds what highdicom leaves out: SourceImageSequence
with purpose "Source image for image processing operation", ImageType DERIVED\\SECONDARY,
DerivationDescription and BurnedInAnnotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.inference.model import normalise_cam, upsample_cam
from node.results.drawing import MIN_WIDTH, Line, Style, colour_scale, font_unit, stack, text_band
from node.results.identity import AlgorithmInfo, NodeIdentity, add_study_level
from node.results.order import SourcePosition

MAX_SIDE = 1024
EVIDENCE_FLOOR = 0.2
MAX_OPACITY = 0.45
SC_SERIES_DESCRIPTION = "AI heatmap mura-node - NOT FOR PRIMARY DIAGNOSIS"
UNTRAINED_BANNER = "UNTRAINED MODEL - NOT FOR DIAGNOSIS"
NOT_FOR_DIAGNOSIS = "NOT FOR PRIMARY DIAGNOSIS"
SCALE_LABEL = "Heatmap: class activation, relative to this image"
# Blue, cyan, green, yellow, red: a perceptually ordered ramp that reads well over gray.
_RAMP = np.array(
    [[0.0, 0.0, 0.6], [0.0, 0.8, 1.0], [0.2, 0.9, 0.2], [1.0, 0.9, 0.0], [1.0, 0.1, 0.0]],
    dtype=np.float32,
)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Values (any shape; clipped to [0, 1]) to RGB in [0, 1] along the ramp: shape + (3,),
    float32, linear between the ramp's evenly spaced colours."""
    knots = np.linspace(0.0, 1.0, len(_RAMP))
    return np.stack(
        [np.interp(values, knots, _RAMP[:, channel]) for channel in range(3)], axis=-1
    ).astype(np.float32)


@dataclass(frozen=True)
class HeatmapCaption:
    """What a heatmap's banner says: the study's finding and type, this image's probability, the
    algorithm, and where the image sits in its study."""

    abnormal: bool  # the study's finding
    study_type: str | None  # MURA study type, e.g. "wrist"
    probability: float  # this image's, in [0, 1]
    algorithm: AlgorithmInfo
    position: SourcePosition

    def lines(self) -> list[Line]:
        finding = "ABNORMAL" if self.abnormal else "NORMAL"
        study = f"{self.study_type} study" if self.study_type else "study of unknown type"
        warning = [Line(UNTRAINED_BANNER, Style.WARNING)] if self.algorithm.untrained else []
        return [
            *warning,
            Line(f"Study finding: {finding} ({study})", Style.TITLE),
            Line(f"This image: probability {self.probability:.3f}"),
            Line(f"Source image: {self.position.describe()}"),
            Line(f"Algorithm: {self.algorithm.name} version {self.algorithm.version}"),
            Line(f"AI heatmap - {NOT_FOR_DIAGNOSIS}"),
        ]


def display_and_map(
    unit: np.ndarray, cam: np.ndarray, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Display values (H, W) or (H, W, 3) in [0, 1] and a raw map (h, w) to what the heatmap is
    drawn from: the radiograph in gray and the map's positive part scaled to [0, 1], both float32
    (H', W'), longest side at most ``max_side`` (aspect ratio kept)."""
    gray = unit if unit.ndim == 2 else unit @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    if size != (height, width):
        image = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True
        )
    base = image[0, 0].clamp(0, 1).numpy()
    return base, normalise_cam(upsample_cam(torch.from_numpy(cam), *size)).numpy()


def opacity(heat: np.ndarray) -> np.ndarray:
    """The colour's opacity for map values in [0, 1] (any shape): 0 up to the evidence floor,
    rising linearly to `MAX_OPACITY` at 1."""
    return MAX_OPACITY * np.clip((heat - EVIDENCE_FLOOR) / (1 - EVIDENCE_FLOOR), 0, 1)


def blend_heatmap(unit: np.ndarray, cam: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Display values (H, W) or (H, W, 3) in [0, 1] and a raw map (h, w) to the radiograph with the
    map blended in colour: RGB uint8 (H', W', 3), longest side at most ``max_side``."""
    base, heat = display_and_map(unit, cam, max_side)
    # Colour goes only where the map exceeds the floor; elsewhere its opacity is 0 and the
    # radiograph stays as it is: those pixels are converted to 8 bits once, in gray, and only the
    # shown ones are blended in floating point (the same values as blending every pixel).
    shown = np.flatnonzero(heat > EVIDENCE_FLOOR)
    evidence = heat.ravel()[shown]
    alpha = opacity(evidence)[:, None]
    mixed = base.ravel()[shown][:, None] * (1 - alpha) + colour_ramp(evidence) * alpha
    blended = np.repeat(to_8_bits(base)[..., None], 3, axis=2)
    blended.reshape(-1, 3)[shown] = to_8_bits(mixed)
    return blended


def to_8_bits(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) to uint8, rounded to the nearest."""
    return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)


def scale_colours() -> np.ndarray:
    """The colours the map is drawn in, weakest shown evidence to strongest: (N, 3) in [0, 1]."""
    return colour_ramp(np.linspace(EVIDENCE_FLOOR, 1.0, 64, dtype=np.float32))


@lru_cache(maxsize=32)
def scale_band(width: int, unit: int) -> np.ndarray:
    """The colour scale band drawn under every heatmap and the summary (`colour_scale` of
    `scale_colours`), drawn once per size: RGB uint8 (height, ``width``, 3), read-only."""
    band = colour_scale(scale_colours(), width, SCALE_LABEL, unit)
    band.setflags(write=False)
    return band


def annotate_heatmap(blended: np.ndarray, caption: HeatmapCaption) -> np.ndarray:
    """The banner above the blended radiograph (H, W, 3) and the colour scale below it, on a canvas
    at least `MIN_WIDTH` wide (the radiograph centred): RGB uint8 (H + bands, max(W, 640), 3)."""
    width = max(blended.shape[1], MIN_WIDTH)
    unit = font_unit(width)
    banner = text_band(caption.lines(), width, unit)
    return stack([banner, blended, scale_band(width, unit)], width)


def render_heatmap(
    unit: np.ndarray, cam: np.ndarray, caption: HeatmapCaption, max_side: int = MAX_SIDE
) -> np.ndarray:
    """`blend_heatmap`, then `annotate_heatmap`: the SC's pixels, RGB uint8."""
    return annotate_heatmap(blend_heatmap(unit, cam, max_side), caption)


def source_reference(source: Dataset) -> Dataset:
    """A SourceImageSequence item for ``source`` with purpose (121322, DCM, "Source image for
    image processing operation")."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "121322", "DCM"
    purpose.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def build_sc(
    source: Dataset,
    rgb: np.ndarray,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    instance_number: int,
    probability: float,
    algorithm_name: str,
    series_number: int = 991,
    created: datetime | None = None,
) -> SCImage:
    """The Secondary Capture of one rendered heatmap, referencing its source image; ``source`` is
    the image's header as cleaned by `node.results.sanitise.clean_source`, ``rgb`` the image
    (H, W, 3) uint8 from `render_heatmap`, ``created`` the time the result series was made
    (SeriesDate, SeriesTime; default now).

    BurnedInAnnotation is YES: the banner names no patient, but the radiograph under it is the
    source's own pixels, which may carry the modality's burned-in annotation; YES makes
    de-identification tools treat the image with the care its source needs."""
    orientation = source.get("PatientOrientation")
    sc = rgb_secondary_capture(
        source,
        rgb,
        identity,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        laterality=str(source.get("ImageLaterality") or source.get("Laterality") or ""),
        series_description=SC_SERIES_DESCRIPTION,
    )
    sc.PatientOrientation = list(orientation) if orientation else ""  # type: ignore[assignment]
    sc.DerivationDescription = (
        f"Class activation map of {algorithm_name} (probability {probability:.3f}) blended over "
        "the windowed source image, with a burned-in banner; AI rendering, not for primary "
        "diagnosis"
    )[:1024]
    sc.SourceImageSequence = [source_reference(source)]
    add_study_level(sc, source, created or datetime.now())
    return sc


def rgb_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    identity: NodeIdentity,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    laterality: str,
    series_description: str,
) -> SCImage:
    """An RGB Secondary Capture (``rgb`` (H, W, 3) uint8), in Explicit VR Little Endian, filed
    with the cleaned ``source``'s patient and study: the node as manufacturer, ImageType
    DERIVED\\SECONDARY, BurnedInAnnotation YES, Laterality L or R (else empty, Type 2C),
    PatientOrientation empty (Type 2C; callers that know one set it), the source's
    BodyPartExamined."""
    laterality = laterality.strip()
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=identity.manufacturer,
        # highdicom insists on an orientation of single letters: emptied below, and set by the
        # caller from the source's own (compound letters included) where there is one.
        patient_orientation=("A", "F"),
        laterality=laterality if laterality in ("L", "R") else None,
        # highdicom's default for a Secondary Capture is Implicit VR Little Endian; every result
        # of the node is Explicit VR Little Endian (node/deliver/scu.py sends it as written)
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.PatientOrientation = ""  # type: ignore[assignment]
    if laterality not in ("L", "R"):
        sc.Laterality = ""  # Type 2C for paired body parts: present, unknown
    sc.SeriesDescription = series_description
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.ManufacturerModelName = identity.model_name
    sc.SoftwareVersions = identity.software_version
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    return sc
