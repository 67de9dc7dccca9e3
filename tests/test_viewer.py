"""What a radiologist sees: the node's results in OHIF 3, read from a real Orthanc over DICOMweb.

storescu -> node -> worker -> dispatcher -> Orthanc (with its DICOMweb plugin), then OHIF 3.13
(`tests/viewer/`, pinned with package-lock.json) opens the study in Debian's Chromium, driven by
playwright-core, and a series is opened by double-clicking its thumbnail. Screenshots are kept
under the test's tmp_path, and copied to $MURA_VIEWER_SCREENSHOTS when that is set.

The study: two views of a real CR from pydicom-data (`RG3_UNCR.dcm`, a lower leg, MONOCHROME1,
10 bits), downsampled to 440 x 440 and sent as a wrist study; the model is untrained.
"""

from __future__ import annotations

import re
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
from node.dispatch import Dispatcher
from node.engine import InferenceEngine, StudyResult
from node.imaging import dicom_file_to_tensor
from node.service import Node
from node.worker import Worker
from tests.conftest import FakeClock, node_config
from tests.factory import storescu, write
from tests.ohif import Screen, ViewerServer, check_harness, keep_screenshots, open_in_ohif
from tests.orthanc import Orthanc
from tests.test_pipeline import Pipeline

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
    scs: list[Dataset]  # the SCs as Orthanc holds them
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
    worker, dispatcher = Worker(config, engine, clock), Dispatcher(config, clock)
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
        assert len(by_class[SR_CLASS]) == 1 and len(by_class[SC_CLASS]) == len(files)
        tensors = [dicom_file_to_tensor(path) for path in files]
        yield Delivered(
            viewer_url=viewer.url,
            study_uid=study_uid,
            source_series_number=1,
            sources=sources,
            sr=by_class[SR_CLASS][0],
            scs=sorted(by_class[SC_CLASS], key=lambda ds: int(ds.InstanceNumber)),
            result=engine.predict_studies([("wrist", tensors)])[0],
        )
    finally:
        worker.close()
        dispatcher.close()
        node.stop()


def saturated_fraction(png: Path) -> float:
    """The fraction of pixels in a screenshot with strong colour (HSV saturation > 0.5 and value
    > 0.25): zero for a grey radiograph, high where a heatmap is blended in."""
    hsv = np.asarray(Image.open(png).convert("RGB").convert("HSV"), dtype=np.float32) / 255
    return float(np.mean((hsv[..., 1] > 0.5) & (hsv[..., 2] > 0.25)))


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
    assert saturated_fraction(source.screenshots["viewport"]) < 0.01

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
    assert saturated_fraction(screen.screenshots["viewport"]) > 0.02


def test_sr_regions_and_labels_in_ohif(delivered: Delivered, tmp_path: Path) -> None:
    """The SR opens without error; its first region is drawn on its image with the probability
    and the finding site; after "continue tracking? Yes" the measurements panel lists one region
    per image (series and instance number) with the image's finding and the finding site.

    What OHIF 3.13 reads (extensions/cornerstone-dicom-sr): each TID 1501/1410 group of the
    Imaging Measurements is a measurement; a group without a SCOORD crashes the viewer. Over the
    image it writes a TID 1410 group's NUMs as "<concept meaning>: <value to 2 places> <unit
    code>" and its SCT finding site as "363698007: <meaning>". Tracking converts each region into
    a Cornerstone tool with the dcmjs adapter, which takes the region from the group's first
    NUM (INFERRED FROM SCOORD), and the panel row shows the Finding (121071) meaning and the
    finding sites; the probability is not shown there (the row shows the tool's own statistics).
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
    for source, image in zip(sources, result.images, strict=True):
        where = f"S: {source.SeriesNumber} I: {source.InstanceNumber}"
        rows = [row for row in screen.measurement_rows if row.splitlines()[-1] == where]
        assert len(rows) == 1, (where, screen.measurement_rows)
        lines = rows[0].splitlines()
        finding = "Abnormal" if image.probability > result.threshold else "Normal"
        assert finding in lines, (finding, image.probability, result.threshold, rows[0])
        assert any("wrist" in line.lower() for line in lines), rows[0]
