"""End to end with real peers: storescu -> node -> worker -> dispatcher -> a real Orthanc.

The node runs in this process (its worker and dispatcher driven step by step, under a controlled
clock); Orthanc runs as the PACS on loopback ports. Every object the node writes is checked with
dciodvfy, and the SR with dsrdump.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import ModelConfig
from node.deliver.dispatch import Dispatcher
from node.deliver.outbox import Outbox
from node.inference.engine import InferenceEngine
from node.inference.imaging import dicom_file_to_tensor
from node.operate.service import Node
from node.operate.status import collect_status
from node.results.sc import SC_SERIES_DESCRIPTION
from node.results.summary import SUMMARY_SERIES_DESCRIPTION
from node.work.worker import build_worker
from tests.support.factory import dciodvfy_errors, make_radiograph, storescu, write, write_study
from tests.support.nodes import FakeClock
from tests.support.orthanc import Orthanc
from tests.support.pipeline import Pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine.from_config(ModelConfig(allow_untrained=True))


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.fixture
def pipeline(
    make_node: Callable[..., Node], engine: InferenceEngine, orthanc: Orthanc
) -> Iterator[Pipeline]:
    clock = FakeClock()
    destination = {
        "name": "pacs",
        "ae_title": orthanc.ae_title,
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
    }
    node = make_node(clock=clock, dispatch={"max_attempts": 3, "first_retry_s": 30.0})
    from dataclasses import replace

    from node.config import Destination

    config = replace(node.config, destinations=(Destination(**destination),))  # type: ignore[arg-type]
    worker = build_worker(config, engine, clock)
    dispatcher = Dispatcher(config, clock)
    yield Pipeline(node, worker, dispatcher, clock)
    worker.close()
    dispatcher.close()


def test_study_to_sr_and_heatmaps_in_orthanc(
    pipeline: Pipeline, orthanc: Orthanc, engine: InferenceEngine, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", 3, body_part="WRIST", rows=96, columns=80)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    assert storescu(pipeline.node.scp.port, files).returncode == 0
    pipeline.complete()
    assert pipeline.study(study_uid).state == "READY"
    assert pipeline.process()
    study = pipeline.study(study_uid)
    assert study.state == "DISPATCHING", study.reason
    results = pipeline.results(study_uid)
    assert [r.kind for r in results] == ["sr", "sc", "sc", "sc", "summary"]
    for result in results:
        assert dciodvfy_errors(pipeline.node.store.path_of(result.file_path)) == []
    sr_path = pipeline.node.store.path_of(results[0].file_path)
    assert subprocess.run(["dsrdump", str(sr_path)], capture_output=True).returncode == 0

    assert pipeline.dispatcher.run_once() == 5
    assert pipeline.study(study_uid).state == "DONE"
    received = orthanc.instances()
    assert sorted(i["SOPClassUID"] for i in received) == ["1.2.840.10008.5.1.4.1.1.7"] * 4 + [
        "1.2.840.10008.5.1.4.1.1.88.33"
    ]
    assert {i["StudyInstanceUID"] for i in received} == {study_uid}
    assert {d.state for d in pipeline.dispatches()} == {"SENT"}

    from node.operate.status import study_history
    from node.operate.status_view import render_history

    history = study_history(pipeline.node.engine, study_uid[-12:])
    assert history is not None and history.state == "DONE"
    assert [e.event for e in history.history] == [
        "opened",
        "ready",
        "claimed",
        "results",
        "done",
    ]
    assert [d.state for d in history.deliveries] == ["SENT"] * 5
    assert "all results delivered" in render_history(history)

    # The SR that arrived says what the engine says about these images.
    sr_id = next(
        i
        for i in orthanc.get("/instances")
        if orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] == "SR"
    )
    (tmp_path / "sr.dcm").write_bytes(orthanc.file(sr_id))
    import highdicom as hd

    sr = dcmread(tmp_path / "sr.dcm")
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    groups = list(report.content.get_image_measurement_groups())
    regions = report.content.get_planar_roi_measurement_groups()
    tensors = [dicom_file_to_tensor(path) for path in files]
    expected = engine.predict_studies([("wrist", tensors)])[0]
    values = [g.get_measurements()[0].value for g in groups]
    np.testing.assert_allclose(values, [i.probability for i in expected.images], atol=1e-5)
    (evaluations,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    study_probability = next(i for i in evaluations.ContentSequence if i.ValueType == "TEXT")
    assert float(study_probability.TextValue) == pytest.approx(expected.probability, abs=1e-5)
    finding = "Abnormal" if expected.abnormal else "Normal"
    assert {r.finding_type.meaning for r in regions} == {finding}
    assert [r.tracking_uid for r in regions] == [g.tracking_uid for g in groups]
    assert {g.source_images[0].referenced_sop_instance_uid for g in groups} == {
        str(dcmread(f).SOPInstanceUID) for f in files
    }


def test_chest_study_is_ignored_and_nothing_is_sent(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "chest", 2, body_part="CHEST")
    assert storescu(pipeline.node.scp.port, files).returncode == 0
    pipeline.complete()
    assert pipeline.study(str(dcmread(files[0]).StudyInstanceUID)).state == "IGNORED"
    assert not pipeline.process()
    assert pipeline.dispatcher.run_once() == 0
    assert orthanc.get("/instances") == []


def test_undecodable_image_fails_the_study_with_a_reason(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    ds = make_radiograph(body_part="HAND", rows=64, columns=64)
    ds.PixelData = ds.PixelData[:50]  # stored as received; decoding finds it short
    write(ds, tmp_path / "short.dcm")
    assert storescu(pipeline.node.scp.port, [tmp_path / "short.dcm"]).returncode == 0
    pipeline.complete()
    assert pipeline.process()
    study = pipeline.study(str(ds.StudyInstanceUID))
    assert study.state == "FAILED"
    assert study.reason.startswith(
        "input fault: image 1 of 1 cannot be used: cannot decode pixel data"
    )
    report = collect_status(pipeline.node.engine, pipeline.clock())
    assert report.failed_studies[0].reason == study.reason


def test_destination_down_then_back_gets_everything_once(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", 2, body_part="ELBOW", rows=64, columns=64)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    assert storescu(pipeline.node.scp.port, files).returncode == 0
    pipeline.complete()
    assert pipeline.process()
    orthanc.stop()
    assert pipeline.dispatcher.run_once() == 4  # the SR, 2 heatmaps, the summary
    assert {(d.state, d.attempts) for d in pipeline.dispatches()} == {("RETRY", 1)}
    assert pipeline.dispatcher.run_once() == 0  # backing off: nothing is due yet
    pipeline.clock.advance(31)
    assert pipeline.dispatcher.run_once() == 4
    pipeline.clock.advance(61)
    pipeline.dispatcher.run_once()
    assert {d.state for d in pipeline.dispatches()} == {"DEAD"}  # max_attempts = 3
    report = collect_status(pipeline.node.engine, pipeline.clock())
    assert report.deliveries["DEAD"] == 4 and len(report.dead_letters) == 4
    assert pipeline.study(study_uid).state == "DISPATCHING"

    orthanc.start()
    assert Outbox(pipeline.node.engine, pipeline.clock).retry_dead() == 4
    assert pipeline.dispatcher.run_once() == 4
    assert {d.state for d in pipeline.dispatches()} == {"SENT"}
    assert pipeline.dispatcher.run_once() == 0  # nothing goes twice
    assert len(orthanc.get("/instances")) == 4
    assert pipeline.study(study_uid).state == "DONE"


def test_late_instance_gives_a_second_sr_naming_the_first(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    study_uid = generate_uid()
    first = write_study(
        tmp_path / "a", 2, study_uid=study_uid, body_part="HAND", rows=64, columns=64
    )
    assert storescu(pipeline.node.scp.port, first).returncode == 0
    pipeline.complete()
    assert pipeline.process()
    pipeline.dispatcher.run_once()
    late = write(
        make_radiograph(study_uid=study_uid, body_part="HAND", rows=64, columns=64, seed=7),
        tmp_path / "late.dcm",
    )
    assert storescu(pipeline.node.scp.port, [late]).returncode == 0
    assert pipeline.study(study_uid).state == "RECEIVING"
    pipeline.complete()
    assert pipeline.process()
    pipeline.dispatcher.run_once()
    reports = [r for r in pipeline.results(study_uid) if r.kind == "sr"]
    assert len(reports) == 2
    second = dcmread(pipeline.node.store.path_of(reports[1].file_path))
    named = (
        second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    )
    assert named.ReferencedSOPInstanceUID == reports[0].sop_instance_uid
    assert dciodvfy_errors(pipeline.node.store.path_of(reports[1].file_path)) == []
    in_orthanc = [i for i in orthanc.instances() if i["Modality"] == "SR"]
    assert len(in_orthanc) == 2


def test_serve_end_to_end_with_worker_and_dispatcher_processes(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    from tests.support.factory import free_port, pipeline_config, start_serve

    port = free_port()
    config = pipeline_config(tmp_path, port, (orthanc.ae_title, orthanc.dicom_port))
    serve = start_serve(config)
    try:
        deadline = time.monotonic() + 120
        files = write_study(tmp_path / "study", 3, body_part="FINGER", rows=80, columns=64)
        while storescu(port, files).returncode != 0:
            assert time.monotonic() < deadline and serve.poll() is None, "serve did not start"
            time.sleep(0.5)
        while len(orthanc.get("/instances")) < 5:  # the SR, 3 heatmaps, the summary
            assert time.monotonic() < deadline and serve.poll() is None, "results did not arrive"
            time.sleep(0.5)
        classes = sorted(i["SOPClassUID"] for i in orthanc.instances())
        assert classes == ["1.2.840.10008.5.1.4.1.1.7"] * 4 + ["1.2.840.10008.5.1.4.1.1.88.33"]
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=90)
        assert serve.returncode == 0, output
        assert "UNTRAINED" in output and "Traceback" not in output
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.communicate()


def tracked_sources(ds: Dataset) -> dict[str, list[str]]:
    """SR groups by their Tracking Identifier text ("Study", "Image 1", ...): the SOP Instance
    UIDs of the images each group references, wherever in the group they are (a source image
    item, or the image an image region is drawn on)."""

    def children(item: Dataset) -> list[Dataset]:
        return list(item.get("ContentSequence", []))

    def referenced(item: Dataset) -> list[str]:
        uids = [str(r.ReferencedSOPInstanceUID) for r in item.get("ReferencedSOPSequence", [])]
        return uids + [uid for child in children(item) for uid in referenced(child)]

    groups: dict[str, list[str]] = {}

    def walk(item: Dataset) -> None:
        for child in children(item):
            names = [
                c.TextValue
                for c in children(child)
                if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0].CodeValue == "112039"
            ]
            if child.ValueType == "CONTAINER" and names:
                groups[str(names[0])] = referenced(child)
            else:
                walk(child)

    walk(ds)
    return groups


def test_images_are_numbered_in_the_source_order_not_arrival_order(
    pipeline: Pipeline, orthanc: Orthanc, tmp_path: Path
) -> None:
    """A CR study whose instances arrive 3, 1, 2: the SR's "Image N", the heatmap SC with
    InstanceNumber N and the summary's N-th thumbnail are the source's instance N; the SR, the SCs
    and the summary carry StudyDescription, SeriesDate and SeriesTime, and pass dciodvfy."""
    study_uid = generate_uid()
    series_uid = generate_uid()
    sources = []
    for number, view in ((1, "PA"), (2, "LL"), (3, "AP")):
        ds = make_radiograph(
            study_uid=study_uid,
            body_part="WRIST",
            rows=80,
            columns=64,
            seed=number,
            study_description="XR WRIST 3 VIEWS",
        )
        ds.SeriesInstanceUID, ds.InstanceNumber, ds.ViewPosition = series_uid, number, view
        sources.append(write(ds, tmp_path / f"instance{number}.dcm"))
    uid_of = {n + 1: str(dcmread(path).SOPInstanceUID) for n, path in enumerate(sources)}
    sent = storescu(pipeline.node.scp.port, [sources[2], sources[0], sources[1]])
    assert sent.returncode == 0, sent.stderr
    pipeline.complete()
    assert pipeline.process()
    assert pipeline.dispatcher.run_once() == 5
    assert pipeline.study(study_uid).state == "DONE"

    received = {}
    for index, instance in enumerate(orthanc.get("/instances")):
        path = tmp_path / f"result{index}.dcm"
        path.write_bytes(orthanc.file(instance))
        assert dciodvfy_errors(path) == [], path
        received[path] = dcmread(path)
    assert len(received) == 5
    created = pipeline.clock().astimezone()
    for ds in received.values():
        assert ds.StudyInstanceUID == study_uid
        assert ds.StudyDescription == "XR WRIST 3 VIEWS"
        assert (ds.SeriesDate, ds.SeriesTime) == (
            created.strftime("%Y%m%d"),
            created.strftime("%H%M%S"),
        )

    sr = next(ds for ds in received.values() if ds.Modality == "SR")
    groups = tracked_sources(sr)
    for number in (1, 2, 3):
        assert groups[f"Image {number}"] == [uid_of[number]], groups

    heatmaps = [ds for ds in received.values() if ds.SeriesDescription == SC_SERIES_DESCRIPTION]
    by_number = {int(ds.InstanceNumber): ds for ds in heatmaps}
    assert sorted(by_number) == [1, 2, 3]
    for number, ds in by_number.items():
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == uid_of[number]
        assert ds.BurnedInAnnotation == "YES"

    (summary,) = [
        ds for ds in received.values() if ds.SeriesDescription == SUMMARY_SERIES_DESCRIPTION
    ]
    assert [i.ReferencedSOPInstanceUID for i in summary.SourceImageSequence] == [
        uid_of[1],
        uid_of[2],
        uid_of[3],
    ]
    assert (
        len({sr.SeriesInstanceUID, heatmaps[0].SeriesInstanceUID, summary.SeriesInstanceUID}) == 3
    )


def test_presentation_states_go_to_a_destination_that_asks_for_them(
    pipeline: Pipeline, orthanc: Orthanc, engine: InferenceEngine, tmp_path: Path
) -> None:
    """objects = ["gsps"]: one presentation state per image, numbered in the source's order, each
    referencing its image, and nothing else; every one passes dciodvfy at Orthanc."""
    from dataclasses import replace

    base = pipeline.worker.config
    config = replace(base, destinations=(replace(base.destinations[0], objects=("gsps",)),))
    asking = Pipeline(
        pipeline.node,
        build_worker(config, engine, pipeline.clock),
        Dispatcher(config, pipeline.clock),
        pipeline.clock,
    )
    try:
        study_uid, series_uid = generate_uid(), generate_uid()
        files = []
        for number in (2, 1):  # arrival order: instance 2 first
            ds = make_radiograph(
                study_uid=study_uid, body_part="ELBOW", rows=64, columns=48, seed=number
            )
            ds.SeriesInstanceUID, ds.InstanceNumber = series_uid, number
            files.append(write(ds, tmp_path / f"instance{number}.dcm"))
        uid_of = {int(dcmread(f).InstanceNumber): str(dcmread(f).SOPInstanceUID) for f in files}
        assert storescu(asking.node.scp.port, files).returncode == 0
        asking.complete()
        assert asking.process()
        assert [r.kind for r in asking.results(study_uid)].count("gsps") == 2
        assert asking.dispatcher.run_once() == 2
        assert asking.study(study_uid).state == "DONE", [d.last_error for d in asking.dispatches()]
        arrived = {}
        for index, instance in enumerate(orthanc.get("/instances")):
            path = tmp_path / f"gsps{index}.dcm"
            path.write_bytes(orthanc.file(instance))
            assert dciodvfy_errors(path) == [], path
            ds = dcmread(path)
            assert ds.Modality == "PR" and ds.StudyInstanceUID == study_uid
            arrived[int(ds.InstanceNumber)] = ds
        assert sorted(arrived) == [1, 2]
        for number, ds in arrived.items():
            image = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
            assert image.ReferencedSOPInstanceUID == uid_of[number]
            assert (
                "AI: " in ds.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
            )
    finally:
        asking.worker.close()
        asking.dispatcher.close()
