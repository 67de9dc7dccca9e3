"""What a radiologist sees: the node's results in OHIF 3, read from a real Orthanc over DICOMweb.

storescu -> node -> worker -> dispatcher -> Orthanc (with its DICOMweb plugin), then OHIF 3.13
(`tests/viewer/`, pinned with package-lock.json) opens the study in Debian's Chromium, driven by
playwright-core, and a series is opened by double-clicking its thumbnail: the heatmaps and the
summary image must display, their burned-in text legible on screen (Tesseract), and the SR must
open without error with its regions, probability and finding. Screenshots are kept under the
test's tmp_path, and copied to $MURA_VIEWER_SCREENSHOTS when that is set.

The study: two views of a real CR from pydicom-data (`RG3_UNCR.dcm`, a lower leg, MONOCHROME1,
10 bits), downsampled to 440 x 440 and sent as a wrist study; the model is untrained.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import Destination, ModelConfig
from node.deliver.dispatch import Dispatcher
from node.inference.engine import InferenceEngine, StudyResult
from node.inference.imaging import dicom_file_to_tensor
from node.operate.service import Node
from node.results.sc import SC_SERIES_DESCRIPTION
from node.results.summary import SUMMARY_SERIES_DESCRIPTION
from node.work.worker import build_worker
from tests.support.factory import storescu, write
from tests.support.nodes import FakeClock, node_config
from tests.support.ohif import Screen, ViewerServer, check_harness, keep_screenshots, open_in_ohif
from tests.support.orthanc import Orthanc
from tests.support.pipeline import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
CRASH = "Something went wrong"


@dataclass(frozen=True)
class Delivered:
    """A study whose results reached Orthanc, and how to look at it."""

    viewer_url: str
    study_uid: str
    source_series_number: int
    sources: list[Dataset]  # headers of the images sent, in instance order
    sr: Dataset  # the SR as Orthanc holds it
    scs: list[Dataset]  # the heatmap SCs as Orthanc holds them, in instance order
    summary: Dataset  # the summary SC as Orthanc holds it
    result: StudyResult  # what the engine says about the sources, in instance order


def wrist_views(directory: Path) -> list[Path]:
    """Two views (AP, and the same image mirrored as LAT) of pydicom-data's RG3 CR, 440 x 440."""
    original = dcmread(get_testdata_file("RG3_UNCR.dcm"))
    pixels = original.pixel_array[::4, ::4]
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number, (view, array) in enumerate((("AP", pixels), ("LAT", pixels[:, ::-1])), start=1):
        ds = original.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDescription, ds.BodyPartExamined = "XR WRIST 2 VIEWS", "WRIST"
        ds.SeriesNumber, ds.InstanceNumber, ds.ViewPosition = 1, number, view
        ds.Rows, ds.Columns = array.shape
        ds.PixelData = np.ascontiguousarray(array).tobytes()
        paths.append(write(ds, directory / f"view{number}.dcm"))
    return paths


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path_factory.mktemp("orthanc"), plugins=("OrthancDicomWeb",))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def viewer(orthanc: Orthanc) -> Iterator[ViewerServer]:
    check_harness()
    server = ViewerServer(orthanc.http_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def delivered(
    tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc, viewer: ViewerServer
) -> Iterator[Delivered]:
    """The wrist study sent through the node (untrained model), its SR and SCs in Orthanc."""
    root = tmp_path_factory.mktemp("node")
    clock = FakeClock()
    node = Node(node_config(root), clock=clock)
    node.start(children=False)
    destination = Destination(
        name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port
    )
    config = replace(node.config, destinations=(destination,))
    engine = InferenceEngine.from_config(ModelConfig(allow_untrained=True))
    worker, dispatcher = build_worker(config, engine, clock), Dispatcher(config, clock)
    pipeline = Pipeline(node, worker, dispatcher, clock)
    try:
        files = wrist_views(root)
        sources = [dcmread(path, stop_before_pixels=True) for path in files]
        study_uid = str(sources[0].StudyInstanceUID)
        # The PACS holds the images it sent to the node, and gets the results back.
        for port, called in ((orthanc.dicom_port, orthanc.ae_title), (node.scp.port, "MURA_NODE")):
            sent = storescu(port, files, called=called)
            assert sent.returncode == 0, sent.stderr
        pipeline.complete()
        assert pipeline.process()
        pipeline.dispatcher.run_once()
        study = pipeline.study(study_uid)
        assert study.state == "DONE", [d.last_error for d in pipeline.dispatches()]
        held = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
        by_class: dict[str, list[Dataset]] = {SR_CLASS: [], SC_CLASS: []}
        for instance_id, tags in zip(orthanc.get("/instances"), held, strict=True):
            if tags["SOPClassUID"] in by_class:
                copy = root / f"{instance_id}.dcm"
                copy.write_bytes(orthanc.file(instance_id))
                by_class[tags["SOPClassUID"]].append(dcmread(copy))
        heatmaps = [
            ds for ds in by_class[SC_CLASS] if ds.SeriesDescription == SC_SERIES_DESCRIPTION
        ]
        summaries = [ds for ds in by_class[SC_CLASS] if ds not in heatmaps]
        assert len(by_class[SR_CLASS]) == 1 and len(heatmaps) == len(files), by_class
        assert [ds.SeriesDescription for ds in summaries] == [SUMMARY_SERIES_DESCRIPTION]
        tensors = [dicom_file_to_tensor(path) for path in files]
        yield Delivered(
            viewer_url=viewer.url,
            study_uid=study_uid,
            source_series_number=1,
            sources=sources,
            sr=by_class[SR_CLASS][0],
            scs=sorted(heatmaps, key=lambda ds: int(ds.InstanceNumber)),
            summary=summaries[0],
            result=engine.predict_studies([("wrist", tensors)])[0],
        )
    finally:
        worker.close()
        dispatcher.close()
        node.stop()


def coloured_fraction(png: Path) -> float:
    """The fraction of pixels with colour (HSV saturation > 0.2, value > 0.25) in the middle 80 %
    of a viewport screenshot (leaving out its border and corner icons): 0 for a grey radiograph,
    about 0.2 for the heatmaps of this study (0.22 measured)."""
    image = Image.open(png).convert("RGB")
    width, height = image.size
    middle = image.crop((width // 10, height // 10, width - width // 10, height - height // 10))
    hsv = np.asarray(middle.convert("HSV"), dtype=np.float32) / 255
    return float(np.mean((hsv[..., 1] > 0.2) & (hsv[..., 2] > 0.25)))


def ocr(png: Path) -> str:
    """The text Tesseract reads from a screenshot's luminance, white space collapsed."""
    assert shutil.which("tesseract"), "tesseract-ocr is not installed (scripts/setup --dev)"
    gray = png.with_name(f"{png.stem}-gray.png")
    Image.open(png).convert("L").save(gray)
    read = subprocess.run(["tesseract", str(gray), "-"], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    return re.sub(r"\s+", " ", read.stdout)


def crash_free(screen: Screen, text: str) -> None:
    """No crash notice on screen (its details are in `text`) and no uncaught exception."""
    assert CRASH not in text, text
    assert not [e for e in screen.errors if e.startswith("pageerror")], screen.errors


def test_heatmap_sc_displays_in_ohif(delivered: Delivered, tmp_path: Path) -> None:
    # The source radiograph first: grey, so the colour measure below is not trivially high.
    source = open_in_ohif(
        delivered.viewer_url,
        delivered.study_uid,
        delivered.source_series_number,
        tmp_path / "source",
    )
    keep_screenshots(source, "source")
    crash_free(source, source.text)
    assert coloured_fraction(source.screenshots["viewport"]) < 0.001

    sc_series = int(delivered.scs[0].SeriesNumber)
    screen = open_in_ohif(delivered.viewer_url, delivered.study_uid, sc_series, tmp_path / "sc")
    keep_screenshots(screen, "heatmap")
    crash_free(screen, screen.text)
    thumbnail = next(t for t in screen.thumbnails if t["series"] == str(sc_series))
    assert str(delivered.scs[0].SeriesDescription) in thumbnail["text"]
    # The viewport shows the heatmap series' first image (overlay: its description, I:1), in
    # colour.
    assert str(delivered.scs[0].SeriesDescription) in screen.overlay, screen.overlay
    assert re.search(r"\bI:\s*1\b", screen.overlay), screen.overlay
    assert coloured_fraction(screen.screenshots["viewport"]) > 0.05
    # Its banner is legible as OHIF shows it: the warning, the study's finding, the image's
    # probability (image 1 of the source series).
    text = ocr(screen.screenshots["viewport"])
    result = delivered.result
    assert "UNTRAINED MODEL - NOT FOR DIAGNOSIS" in text, text
    assert re.search(rf"\b{'ABNORMAL' if result.abnormal else 'NORMAL'}\b", text), text
    assert f"probability {result.images[0].probability:.3f}" in text, text
    assert "NOT FOR PRIMARY DIAGNOSIS" in text, text


def test_summary_image_displays_in_ohif(delivered: Delivered, tmp_path: Path) -> None:
    series = int(delivered.summary.SeriesNumber)
    screen = open_in_ohif(delivered.viewer_url, delivered.study_uid, series, tmp_path / "summary")
    keep_screenshots(screen, "summary")
    crash_free(screen, screen.text)
    assert str(delivered.summary.SeriesDescription) in screen.overlay, screen.overlay
    assert coloured_fraction(screen.screenshots["viewport"]) > 0.01  # the heatmap thumbnails
    text = ocr(screen.screenshots["viewport"])
    assert "UNTRAINED" in text, text
    assert f"probability {delivered.result.probability:.3f}" in text, text


def test_sr_regions_and_labels_in_ohif(delivered: Delivered, tmp_path: Path) -> None:
    """The SR opens without error; its first region is drawn on its image with a probability
    and the finding site; after "continue tracking measurements? Yes" the measurements panel
    lists one region per image (series and instance number) with the finding and finding site.

    How OHIF 3.13 shows an SR (extensions/cornerstone-dicom-sr; docs/results.md has the whole
    story): every Measurement Group needs a SCOORD, or the viewport crashes ("Something went
    wrong"). Over the image it writes a measurement's NUMs as "<meaning>: <value to 2 places>
    <unit code value>" and its SCT finding site as "363698007: <meaning>". Tracking turns each
    region group into a Cornerstone tool (the dcmjs adapter takes the region from the group's
    first NUM if it has one, so a region group with a NUM does not hydrate); its panel row then
    shows the Finding (121071) meaning and the finding site, not the probability.
    """
    screen = open_in_ohif(
        delivered.viewer_url,
        delivered.study_uid,
        int(delivered.sr.SeriesNumber),
        tmp_path / "sr",
        sr=True,
        track=True,
    )
    keep_screenshots(screen, "sr")
    assert_sr_on_screen(screen, delivered.sources, delivered.result)


def assert_sr_on_screen(screen: Screen, sources: list[Dataset], result: StudyResult) -> None:
    """What OHIF must show of an SR about `sources` (in `result`'s order); see the test above."""
    crash_free(screen, screen.text)
    # Over the image of the first region: its probability (one of the images') and finding site.
    shown = [
        float(m.group(1))
        for line in screen.annotation_lines
        if (m := re.fullmatch(r"Probability: (\d\.\d\d) 1", line))
    ]
    assert len(shown) == 1, screen.annotation_lines
    assert any(abs(shown[0] - image.probability) <= 0.005 + 1e-9 for image in result.images), (
        shown,
        [image.probability for image in result.images],
    )
    assert any(
        re.fullmatch(r"363698007: .*[Ww]rist.*", line) for line in screen.annotation_lines
    ), screen.annotation_lines

    crash_free(screen, screen.tracked_text)
    finding = "Abnormal" if result.abnormal else "Normal"  # each image's region: the study's
    for source in sources:
        where = f"S: {source.SeriesNumber} I: {source.InstanceNumber}"
        rows = [row for row in screen.measurement_rows if row.splitlines()[-1] == where]
        assert len(rows) == 1, (where, screen.measurement_rows)
        lines = rows[0].splitlines()
        assert finding in lines, (finding, rows[0])
        assert any("wrist" in line.lower() for line in lines), rows[0]
