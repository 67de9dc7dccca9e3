"""docs/pacs.md, tested: a real Orthanc routes studies to the node with docs/orthanc/mura-route.lua
and receives the results back into the same study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Study, StudyEvent, make_engine
from node.states import StudyEventName
from tests.support.factory import free_port, pipeline_config, start_serve, storescu, write_study
from tests.support.orthanc import Orthanc
from tests.support.serve import wait_for

pytestmark = pytest.mark.slow

ROUTE = Path(__file__).resolve().parents[2] / "docs" / "orthanc" / "mura-route.lua"
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def node_port() -> int:
    return free_port()


@pytest.fixture
def orthanc(tmp_path: Path, node_port: int) -> Iterator[Orthanc]:
    pacs = Orthanc(
        tmp_path / "orthanc",
        extra={
            # As in docs/pacs.md, with a short StableAge to keep the test short.
            "DicomModalities": {"mura": ["MURA_NODE", "127.0.0.1", node_port]},
            "LuaScripts": [str(ROUTE)],
            "StableAge": 2,
        },
    )
    pacs.start()
    yield pacs
    pacs.stop()


def test_orthanc_routes_a_study_and_gets_the_results_back(
    orthanc: Orthanc, node_port: int, tmp_path: Path
) -> None:
    config = pipeline_config(
        tmp_path,
        node_port,
        (orthanc.ae_title, orthanc.dicom_port),
        dicom_extra=f'accepted_calling_ae_titles = ["{orthanc.ae_title}"]',
    )
    serve = start_serve(config)
    try:
        files = write_study(tmp_path / "study", 2, body_part="WRIST", rows=64, columns=64)
        study_uid = str(dcmread(files[0]).StudyInstanceUID)
        # The modality sends to Orthanc only; Orthanc forwards to the node by its routing rule.
        assert storescu(orthanc.dicom_port, files, called=orthanc.ae_title).returncode == 0

        def classes() -> list[str]:
            return sorted(i["SOPClassUID"] for i in orthanc.instances())

        wait_for(lambda: len(classes()) == 6, timeout=180, what="the results in Orthanc")
        instances = orthanc.instances()
        assert {i["StudyInstanceUID"] for i in instances} == {study_uid}
        # The 2 images, their SR, 2 heatmaps and the summary image (both Secondary Captures).
        assert classes() == sorted(["1.2.840.10008.5.1.4.1.1.1"] * 2 + [SC] * 3 + [SR])

        # The study is stable again after the results and Orthanc forwards it once more: the
        # node takes the identical images as re-sends and processes nothing twice.
        def forwarded_twice() -> bool:
            jobs = [j for j in orthanc.get("/jobs?expand") if j["Type"] == "DicomModalityStore"]
            return len(jobs) >= 2 and all(j["State"] == "Success" for j in jobs)

        wait_for(forwarded_twice, timeout=60, what="Orthanc to forward the study again")
        time.sleep(1)
        assert len(orthanc.get("/instances")) == 6
        status = subprocess.run(
            [sys.executable, "-m", "node", "status", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert '"DONE": 1' in status.stdout and '"stored": 2' in status.stdout, status.stdout
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=60)
        assert serve.returncode == 0, output
        assert output.count("delivered SR to orthanc") == 1
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.communicate()


def test_a_study_forwarded_by_orthanc_completes_after_its_release(
    orthanc: Orthanc, node_port: int, tmp_path: Path
) -> None:
    """With Orthanc as a release-trigger sender, the forwarded study completes on the release of
    Orthanc's association, long before the (here 10-minute) quiet period."""
    config = pipeline_config(
        tmp_path,
        node_port,
        (orthanc.ae_title, orthanc.dicom_port),
        dicom_extra=f'accepted_calling_ae_titles = ["{orthanc.ae_title}"]',
    )
    config.write_text(
        config.read_text().replace(
            "quiet_period_s = 1.0",
            "quiet_period_s = 600.0\nforce_complete_s = 900.0\n"
            f'release_trigger_aes = ["{orthanc.ae_title}"]\nrelease_settle_s = 1.0',
        )
    )
    serve = start_serve(config)
    try:
        files = write_study(tmp_path / "study", 3, body_part="WRIST", rows=64, columns=64)
        study_uid = str(dcmread(files[0]).StudyInstanceUID)
        assert storescu(orthanc.dicom_port, files, called=orthanc.ae_title).returncode == 0
        wait_for(lambda: len(orthanc.instances()) == 8, timeout=180, what="the results in Orthanc")
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'mura-node.db'}", readonly=True)
        try:
            with Session(engine) as session:
                details = session.scalars(
                    select(StudyEvent.detail)
                    .join(Study, Study.id == StudyEvent.study_id)
                    .where(
                        Study.study_instance_uid == study_uid,
                        StudyEvent.event == StudyEventName.READY,
                    )
                ).all()
        finally:
            engine.dispose()
        assert len(details) == 1
        assert str(details[0]).startswith("released by ORTHANC after 1 s settle; ")
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=60)
        assert serve.returncode == 0, output
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.communicate()
