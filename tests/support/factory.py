"""Small synthetic radiographs and helpers to send them with real DICOM tools."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# The Image Pixel module's attributes: without them a data set is no image.
IMAGE_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PixelData",
)
PATIENT_NAME = "Testpatient^Henrietta"
PATIENT_ID = "PID-998877"


def make_radiograph(
    *,
    study_uid: str | None = None,
    sop_class: str = CR,
    body_part: str | None = "HAND",
    rows: int = 32,
    columns: int = 32,
    study_description: str | None = None,
    series_description: str | None = None,
    seed: int = 0,
    bits_stored: int = 12,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC123"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX" if sop_class != CR else "CR"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if study_description is not None:
        ds.StudyDescription = study_description
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.PatientOrientation = ""
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    ds.PixelData = rng.integers(0, 1 << bits_stored, size=(rows, columns), dtype=dtype).tobytes()
    ds["PixelData"].VR = "OB" if bits_stored <= 8 else "OW"
    return ds


def raw(ds: Dataset, keyword: str, value: bytes) -> Dataset:
    """Set an element to bytes pydicom would refuse to write as a value (written as they are)."""
    tag = Tag(tag_for_keyword(keyword))
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)  # type: ignore[assignment]
    return ds


def write(ds: Dataset, path: Path) -> Path:
    if any(isinstance(ds.get_item(tag), RawDataElement) for tag in list(ds.keys())):
        # Raw elements are written as they are only when pydicom sees no change of encoding.
        ds.set_original_encoding(False, True, ds._character_set)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(
    directory: Path,
    count: int,
    *,
    study_uid: str | None = None,
    prefix: str = "img",
    **kwargs: object,
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    return [
        write(
            make_radiograph(study_uid=study_uid, seed=index, **kwargs),  # type: ignore[arg-type]
            directory / f"{prefix}{index:04d}.dcm",
        )
        for index in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: Sequence[Path],
    *extra: str,
    calling: str = "MODALITY",
    called: str = "MURA_NODE",
) -> subprocess.CompletedProcess[str]:
    """Send files with dcmtk's storescu on one association (-R: only the files' own syntaxes)."""
    command = ["storescu", "-R", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *map(str, files)], capture_output=True, text=True, env=dcmtk_env(), timeout=300
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines dicom3tools' dciodvfy prints for a file (warnings are not errors)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]


def pipeline_config(
    directory: Path, port: int, destination: tuple[str, int], dicom_extra: str = ""
) -> Path:
    """A `serve` configuration with one untrained worker and one destination (AE title, port),
    quick to complete studies and to deliver."""
    config = directory / "mura-node.toml"
    config.write_text(
        f"""
[dicom]
host = "127.0.0.1"
port = {port}
{dicom_extra}
[storage]
data_dir = "{directory / "data"}"
[completion]
quiet_period_s = 1.0
tick_interval_s = 0.2
[model]
allow_untrained = true
[dispatch]
poll_interval_s = 0.2
[[destinations]]
name = "{destination[0].lower()}"
ae_title = "{destination[0]}"
host = "127.0.0.1"
port = {destination[1]}
"""
    )
    return config


def start_serve(config: Path) -> subprocess.Popen[str]:
    """`mura-node serve` in its own process group (its children with it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "node", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")  # Debian's libpixelmed-java (pixelmed-apps)


def sr_validator_findings(path: Path) -> list[str]:
    """The Warning and Error lines of pixelmed's DicomSRValidator (IOD, template and value set
    checks) for an SR file. Raises AssertionError with its output when it did not run to the end."""
    limits = ("xpathExprOpLimit", "xpathExprGrpLimit", "xpathTotalOpLimit")  # JDK 17 needs them off
    result = subprocess.run(
        [
            "java",
            *(f"-Djdk.xml.{limit}=0" for limit in limits),
            "-cp",
            str(PIXELMED_JAR),
            "com.pixelmed.validate.DicomSRValidator",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert "Root Template Validation Complete" in output, output
    assert "IOD validation complete" in output, output
    return [
        line
        for line in output.splitlines()
        if line.startswith(("Warning", "Error", "Internal Error"))
    ]
