"""`mura-node demo`: the whole pipeline on this machine in about a minute, nothing to configure.

It starts a node (SCP, scheduler, a worker process and the dispatcher) on a free loopback port
with a temporary data directory and the embedded database, and a small result receiver standing in
for the PACS. It sends a generated three-view hand study (pynetdicom as the modality), waits for the
SR, the heatmaps and the summary image to arrive at the receiver, prints what they say and where
they are, and writes PNG previews of the heatmaps and the summary. The model is the one configured (model.cards), else the untrained
network, and the summary says so plainly.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from node.config import (
    CompletionConfig,
    Config,
    Destination,
    DicomConfig,
    DispatchConfig,
    StorageConfig,
)
from node.operate.service import Node
from node.results.summary import SUMMARY_SERIES_DESCRIPTION
from node.states import ResultKind

RECEIVER_AE = "DEMO_PACS"
HEATMAP_PREFIX = "heatmap"  # file names of the received heatmap SCs (ResultKind.SC)
VIEWS = ("PA", "OBLIQUE", "LATERAL")


def synthetic_hand(view: str, seed: int, rows: int = 480, columns: int = 384) -> np.ndarray:
    """A 12-bit radiograph-like image: soft tissue and five finger-like bones over noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    image = 300 + rng.normal(0, 20, (rows, columns)).astype(np.float32)
    palm = ((x - columns / 2) / (columns * 0.33)) ** 2 + ((y - rows * 0.68) / (rows * 0.3)) ** 2 < 1
    image[palm] += 900
    spread = {"PA": 1.0, "OBLIQUE": 0.7, "LATERAL": 0.25}[view]
    for index in range(5):
        cx = columns / 2 + (index - 2) * columns * 0.12 * spread
        bone = (
            (np.abs(x - cx) < columns * 0.025)
            & (y > rows * 0.1 + (index % 3) * 12)
            & (y < rows * 0.75)
        )
        image[bone] += 1700
    return np.clip(image, 0, 4095).astype(np.uint16)


def demo_study() -> list[Dataset]:
    study_uid, series_uid = generate_uid(), generate_uid()
    datasets = []
    for number, view in enumerate(VIEWS, start=1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Demo^Patient",
            "DEMO-0001",
            "",
            "O",
        )
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.BodyPartExamined, ds.StudyDescription = "CR", "HAND", "XR HAND 3 VIEWS"
        ds.SeriesDescription, ds.ViewPosition, ds.SeriesNumber, ds.InstanceNumber = (
            f"HAND {view}",
            "",
            1,
            number,
        )
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [0.15, 0.15]
        pixels = synthetic_hand(view, seed=number)
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    return datasets


class Receiver:
    """A minimal Storage SCP that keeps what the node sends (the PACS of the demo)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.received: list[Path] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=RECEIVER_AE)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        assert server is not None  # block=False always returns the server
        self.server = server
        self.port = int(server.server_address[1])

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if ds.Modality == "SR":
            kind = ResultKind.SR
        elif ds.get("SeriesDescription") == SUMMARY_SERIES_DESCRIPTION:
            kind = ResultKind.SUMMARY
        else:
            kind = ResultKind.SC
        prefix = HEATMAP_PREFIX if kind is ResultKind.SC else kind.value
        with self.lock:
            path = self.directory / f"{prefix}-{len(self.received) + 1}.dcm"
            ds.save_as(path, enforce_file_format=True)
            self.received.append(path)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def run_demo(base: Config, directory: Path | None = None, timeout_s: float = 300.0) -> int:
    root = directory or Path(tempfile.mkdtemp(prefix="mura-node-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    receiver = Receiver(root / "pacs")
    model = (
        base.model if base.model.cards else dataclasses.replace(base.model, allow_untrained=True)
    )
    config = dataclasses.replace(
        base,
        dicom=DicomConfig(host="127.0.0.1", port=_free_port()),
        storage=StorageConfig(data_dir=root / "node"),
        completion=CompletionConfig(quiet_period_s=2.0, force_complete_s=60.0, tick_interval_s=0.5),
        dispatch=DispatchConfig(poll_interval_s=0.5),
        model=model,
        destinations=(Destination("demo-pacs", RECEIVER_AE, "127.0.0.1", receiver.port),),
    )
    print(f"mura-node demo: working in {root}")
    print("  starting a node, a worker process and a result receiver standing in for the PACS ...")
    node = Node(config)
    try:
        node.start()
        study = demo_study()
        _send(study, config.dicom.port, config.dicom.ae_title)
        print(
            f"  sent a 3-view hand study ({len(study)} CR images) to {config.dicom.ae_title} on port {config.dicom.port}"
        )
        print("  waiting for the study to complete and its results to arrive ...")
        deadline = time.monotonic() + timeout_s
        while len(receiver.received) < 2 + len(study):  # the SR, the heatmaps, the summary
            if time.monotonic() > deadline:
                print("mura-node demo: the results did not arrive in time; see the log above")
                return 1
            time.sleep(0.5)
    finally:
        node.stop()
        receiver.stop()
    _summarise(receiver.received, root, untrained=not base.model.cards)
    return 0


def _send(datasets: list[Dataset], port: int, ae_title: str) -> None:
    ae = AE(ae_title="DEMO_MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian)
    for _ in range(60):  # the node's port opens within a second or two
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            break
        time.sleep(0.5)
    else:
        raise RuntimeError("the demo node did not accept an association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status.Status != 0:
                raise RuntimeError(f"the node refused an image: 0x{status.Status:04X}")
    finally:
        assoc.release()


def _summarise(received: list[Path], root: Path, untrained: bool) -> None:
    from PIL import Image

    from node.results.sr import read_summary

    sr_path = next(p for p in received if p.name.startswith(ResultKind.SR))
    summary = read_summary(dcmread(sr_path))
    print()
    if untrained:
        print(
            "  !! The model is UNTRAINED (no model card configured): these numbers come from random"
        )
        print("  !! weights and mean nothing. See models/README.md to install trained weights.")
    print(f"  study type      : {summary.finding_site or 'unknown'}")
    print(f"  finding         : {summary.finding} (study probability {summary.probability:.3f})")
    for index, probability in enumerate(summary.image_probabilities, start=1):
        print(f"  image {index} ({VIEWS[index - 1].lower():<8}): probability {probability:.3f}")
    previews = root / "previews"
    previews.mkdir(exist_ok=True)
    for path in sorted(
        p for p in received if p.name.startswith((HEATMAP_PREFIX, ResultKind.SUMMARY))
    ):
        Image.fromarray(dcmread(path).pixel_array).save(previews / f"{path.stem}.png")
    print(f"  SR              : {sr_path}")
    print(f"  heatmaps (SC)   : {root / 'pacs'}/{HEATMAP_PREFIX}-*.dcm")
    print(f"  summary (SC)    : {root / 'pacs'}/summary-*.dcm")
    print(f"  previews (PNG)  : {previews}")
    print(f"  node data       : {root / 'node'}")
    command = mura_node_command()
    print(f"  its queue       : MURA_NODE_STORAGE__DATA_DIR={root / 'node'} {command} status")
    if command != "mura-node":
        print(f'  (`mura-node` alone: export PATH="{Path(command).parent}:$PATH")')


def mura_node_command() -> str:
    """How to run `mura-node` from a shell here: "mura-node" when PATH finds this environment's,
    else the path of this environment's script (e.g. /srv/mura-node/.venv/bin/mura-node), else
    "python -m node" with this interpreter's path."""
    beside = Path(sys.executable).parent / "mura-node"
    found = shutil.which("mura-node")
    if found and beside.exists() and Path(found).resolve() == beside.resolve():
        return "mura-node"
    return str(beside) if beside.exists() else f"{sys.executable} -m node"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
