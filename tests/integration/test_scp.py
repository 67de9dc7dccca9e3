"""The SCP over real loopback associations: dcmtk's storescu/echoscu and pynetdicom as senders."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from node.clock import utcnow
from node.db import IngestRejection, Instance, Study
from node.operate.service import Node
from node.operate.status import collect_status
from tests.support.factory import (
    BASIC_TEXT_SR,
    CR,
    DX_PRESENTATION,
    DX_PROCESSING,
    IMAGE_PIXEL_KEYWORDS,
    dcmtk_env,
    make_radiograph,
    storescu,
    write,
    write_study,
)
from tests.support.nodes import FakeClock
from tests.support.senders import pynetdicom_send, write_as_is


def instances(node: Node) -> list[Instance]:
    with Session(node.engine) as session:
        return list(session.scalars(select(Instance).order_by(Instance.id)))


def stored_files(node: Node) -> list[Path]:
    return sorted(
        p
        for p in node.store.root.rglob("*")
        if p.is_file() and p.suffix != ".db" and "-wal" not in p.name and "-shm" not in p.name
    )


def test_echo(make_node: Callable[..., Node]) -> None:
    node = make_node()
    result = subprocess.run(
        ["echoscu", "-aec", "MURA_NODE", "127.0.0.1", str(node.scp.port)],
        capture_output=True,
        text=True,
        env=dcmtk_env(),
    )
    assert result.returncode == 0, result.stderr


def test_storescu_study_is_stored_durably(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node()
    files = write_study(tmp_path / "study", 3)
    result = storescu(node.scp.port, files)
    assert result.returncode == 0, result.stderr
    rows = instances(node)
    assert len(rows) == 3
    assert {r.role for r in rows} == {"analyse"}
    assert len({r.study_id for r in rows}) == 1
    for row, source in zip(rows, files, strict=True):
        stored = node.store.root / str(row.file_path)
        assert len(stored.stem) == 32 and stored.parent.name == stored.stem[:2]
        original, copy = dcmread(source), dcmread(stored)
        assert copy.SOPInstanceUID == original.SOPInstanceUID == row.sop_instance_uid
        assert copy.PixelData == original.PixelData
        assert row.calling_ae_title == "MODALITY"
    assert list(node.store.tmp.iterdir()) == []


def test_dx_classes_are_analysed(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node()
    files = [
        write(make_radiograph(sop_class=DX_PRESENTATION, body_part="WRIST"), tmp_path / "a.dcm"),
        write(make_radiograph(sop_class=DX_PROCESSING, body_part="WRIST"), tmp_path / "b.dcm"),
    ]
    assert storescu(node.scp.port, files).returncode == 0
    assert [(r.sop_class_uid, r.role) for r in instances(node)] == [
        (DX_PRESENTATION, "analyse"),
        (DX_PROCESSING, "analyse"),
    ]


@pytest.mark.parametrize(
    ("tool", "args", "syntax", "propose", "bits"),
    [
        ("dcmcjpeg", ["+e1"], "1.2.840.10008.1.2.4.70", "-xs", 12),  # JPEG lossless SV1
        ("dcmcjpeg", ["+el"], "1.2.840.10008.1.2.4.57", None, 12),  # JPEG lossless (pynetdicom)
        ("dcmcjpeg", ["+eb"], "1.2.840.10008.1.2.4.50", "-xy", 8),  # JPEG baseline, 8-bit
        ("dcmcrle", [], "1.2.840.10008.1.2.5", "-xr", 12),
        ("dcmcjpls", ["+el"], "1.2.840.10008.1.2.4.80", "-xt", 12),
        ("dcmconv", ["+td"], "1.2.840.10008.1.2.1.99", "-xd", 12),  # deflated
        ("dcmconv", ["+ti"], "1.2.840.10008.1.2", "-xi", 12),
    ],
)
def test_transfer_syntaxes(
    make_node: Callable[..., Node],
    tmp_path: Path,
    tool: str,
    args: list[str],
    syntax: str,
    propose: str | None,
    bits: int,
) -> None:
    node = make_node()
    source = write(make_radiograph(rows=64, columns=48, bits_stored=bits), tmp_path / "plain.dcm")
    converted = tmp_path / "converted.dcm"
    subprocess.run([tool, *args, str(source), str(converted)], check=True, capture_output=True)
    assert dcmread(converted, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    if propose is None:  # storescu has no option that proposes this syntax on its own
        assert pynetdicom_send(node, converted, CR, syntax)[0] == 0
    else:
        result = storescu(node.scp.port, [converted], propose)
        assert result.returncode == 0, result.stderr
    [row] = instances(node)
    assert row.transfer_syntax_uid == syntax
    stored = dcmread(node.store.root / str(row.file_path))
    assert stored.file_meta.TransferSyntaxUID == syntax
    if syntax == "1.2.840.10008.1.2.4.50":  # lossy: the stored bytes are exactly those sent
        assert stored.PixelData == dcmread(converted).PixelData
    else:
        assert (stored.pixel_array == dcmread(source).pixel_array).all()


def test_real_jpeg2000_cr_from_pydicom_data(make_node: Callable[..., Node], tmp_path: Path) -> None:
    clock = FakeClock()
    node = make_node(clock=clock)
    path = Path(get_testdata_file("RG3_J2KR.dcm"))
    result = storescu(node.scp.port, [path], "-xv")
    assert result.returncode == 0, result.stderr
    [row] = instances(node)
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.4.90"
    assert (node.store.root / str(row.file_path)).read_bytes().endswith(path.read_bytes()[-4096:])
    clock.advance(3600)
    node.scheduler.tick()
    with Session(node.engine) as session:
        study = session.scalars(select(Study)).one()
    # A real lower-extremity CR (BodyPartExamined EXTREMITY, "distal tibia"): not a MURA study.
    assert study.state == "IGNORED"
    assert (
        study.reason
        == "not an upper-extremity study (StudyDescription 'Non-ossifying fibroma of distal tibia')"
    )


def test_concurrent_senders_group_into_studies(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    studies = [generate_uid() for _ in range(4)]
    batches = []
    for sender in range(4):
        files = []
        for study_index, study_uid in enumerate(studies):
            files += write_study(
                tmp_path / f"s{sender}",
                13 if study_index < 2 else 12,
                study_uid=study_uid,
                prefix=f"st{study_index}_",
                rows=16,
                columns=16,
            )
        batches.append(files)
    assert [len(b) for b in batches] == [50] * 4
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(
            target=lambda files=files, i=i: results.append(
                storescu(node.scp.port, files, calling=f"SENDER{i}")
            )
        )
        for i, files in enumerate(batches)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    with Session(node.engine) as session:
        per_study = dict(
            session.execute(
                select(Study.study_instance_uid, text("count(instances.id)"))
                .join(Instance, Instance.study_id == Study.id)
                .group_by(Study.study_instance_uid)
            ).all()
        )
    assert per_study == {studies[0]: 52, studies[1]: 52, studies[2]: 48, studies[3]: 48}
    assert len({r.file_path for r in instances(node)}) == 200


def test_other_storage_class_is_accepted_and_ignored(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    study_uid = generate_uid()
    image = write(make_radiograph(study_uid=study_uid), tmp_path / "image.dcm")
    ds = make_radiograph(study_uid=study_uid, sop_class=BASIC_TEXT_SR)
    for keyword in IMAGE_PIXEL_KEYWORDS:
        delattr(ds, keyword)
    ds.Modality = "SR"
    report = write(ds, tmp_path / "report.dcm")
    result = storescu(node.scp.port, [image, report])
    assert result.returncode == 0, result.stderr
    rows = instances(node)
    assert [(r.sop_class_uid, r.role, r.file_path is None) for r in rows][1] == (
        BASIC_TEXT_SR,
        "ignore",
        True,
    )
    assert len(stored_files(node)) == 1


def test_resend_same_bytes_is_idempotent(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node()
    path = write(make_radiograph(), tmp_path / "a.dcm")
    assert storescu(node.scp.port, [path]).returncode == 0
    assert pynetdicom_send(node, path, "1.2.840.10008.5.1.4.1.1.1") == (
        0,
        "identical instance already stored",
    )
    [row] = instances(node)
    assert row.revision == 1
    assert len(stored_files(node)) == 1


def test_resend_different_bytes_replaces(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node()
    first = make_radiograph(body_part="HAND")
    write(first, tmp_path / "a.dcm")
    assert storescu(node.scp.port, [tmp_path / "a.dcm"]).returncode == 0
    old_path = instances(node)[0].file_path
    first.BodyPartExamined = "WRIST"  # a corrected re-send of the same instance
    write(first, tmp_path / "b.dcm")
    assert storescu(node.scp.port, [tmp_path / "b.dcm"]).returncode == 0
    [row] = instances(node)
    assert (row.revision, row.body_part_examined) == (2, "WRIST")
    assert row.file_path != old_path
    assert stored_files(node) == [node.store.root / str(row.file_path)]


def test_mismatched_instance_uid_is_refused_with_a900(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    ds = make_radiograph()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request will name this one
    path = write_as_is(ds, tmp_path / "mismatch.dcm")
    status, comment = pynetdicom_send(node, path, "1.2.840.10008.5.1.4.1.1.1")
    assert status == 0xA900
    assert "SOPInstanceUID" in comment
    assert instances(node) == []
    assert stored_files(node) == []


def test_mismatched_sop_class_is_refused_with_a900(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    ds = make_radiograph()
    ds.file_meta.MediaStorageSOPClassUID = DX_PRESENTATION
    path = write_as_is(ds, tmp_path / "mismatch.dcm")
    assert pynetdicom_send(node, path, DX_PRESENTATION)[0] == 0xA900
    assert stored_files(node) == []


def test_unparseable_data_set_is_refused_with_c000(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    path = write(make_radiograph(), tmp_path / "good.dcm")
    raw = path.read_bytes()
    # After a valid File Meta: an element with a value representation that does not exist.
    broken = tmp_path / "broken.dcm"
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # after (0002,0000) and its group
    broken.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00ZZ\x04\x001.2\x00")
    status, _ = pynetdicom_send(node, broken, "1.2.840.10008.5.1.4.1.1.1")
    assert status == 0xC000
    assert stored_files(node) == []
    with Session(node.engine) as session:
        [rejection] = session.scalars(select(IngestRejection)).all()
    assert (rejection.status, rejection.calling_ae_title) == (status, "TESTSCU")


def test_path_like_uid_cannot_place_a_file(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node()
    ds = make_radiograph()
    evil = "../../../../../../tmp/mura-evil"
    ds.SOPInstanceUID = evil
    ds.file_meta.MediaStorageSOPInstanceUID = evil
    path = write(ds, tmp_path / "evil.dcm")
    status, comment = pynetdicom_send(node, path, "1.2.840.10008.5.1.4.1.1.1")
    assert status == 0xC001
    assert "not a valid UID" in comment
    assert not Path("/tmp/mura-evil").exists()
    assert stored_files(node) == []


def test_disk_failure_answers_a700_and_leaves_nothing(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    shutil.rmtree(node.store.instances)
    node.store.instances.write_text("not a directory")  # every shard directory now fails to appear
    path = write(make_radiograph(), tmp_path / "a.dcm")
    result = storescu(node.scp.port, [path], "-v")
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr
    assert list(node.store.tmp.iterdir()) == []
    assert instances(node) == []


def test_database_failure_answers_a700_and_removes_the_file(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node()
    with node.engine.begin() as connection:
        connection.execute(text("DROP TABLE study_events"))
    path = write(make_radiograph(), tmp_path / "a.dcm")
    result = storescu(node.scp.port, [path], "-v")
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr
    assert stored_files(node) == []
    assert list(node.store.tmp.iterdir()) == []


def test_calling_ae_title_allow_list(make_node: Callable[..., Node], tmp_path: Path) -> None:
    node = make_node(dicom={"accepted_calling_ae_titles": ("PACS",)})
    path = write(make_radiograph(), tmp_path / "a.dcm")
    refused = storescu(node.scp.port, [path], calling="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr
    assert storescu(node.scp.port, [path], calling="PACS").returncode == 0
    assert len(instances(node)) == 1


def test_wrong_called_ae_title_is_rejected(
    make_node: Callable[..., Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    path = write(make_radiograph(), tmp_path / "a.dcm")
    with caplog.at_level(logging.WARNING, logger="node.receive.scp"):
        result = storescu(node.scp.port, [path], called="SOMEONE_ELSE")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Called AE Title Not Recognized" in result.stderr
    assert instances(node) == []
    assert (
        "association rejected from MODALITY (127.0.0.1): "
        "called AE title 'SOMEONE_ELSE' is not 'MURA_NODE'"
    ) in caplog.messages
    [rejection] = collect_status(node.engine, utcnow()).rejected_last_24h.recent
    assert (rejection.calling_ae_title, rejection.status) == ("MODALITY", 0x0107)


def test_calling_ae_title_not_accepted_is_logged_with_the_reason(
    make_node: Callable[..., Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(dicom={"accepted_calling_ae_titles": ("PACS",)})
    path = write(make_radiograph(), tmp_path / "a.dcm")
    with caplog.at_level(logging.WARNING, logger="node.receive.scp"):
        assert storescu(node.scp.port, [path], calling="INTRUDER").returncode != 0
    assert (
        "association rejected from INTRUDER (127.0.0.1): "
        "calling AE title 'INTRUDER' is not in dicom.accepted_calling_ae_titles"
    ) in caplog.messages


def test_blank_calling_ae_title_is_rejected_and_shown_in_status(
    make_node: Callable[..., Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node()
    path = write(make_radiograph(), tmp_path / "a.dcm")
    with caplog.at_level(logging.INFO):
        result = storescu(node.scp.port, [path], calling=" " * 16)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr  # an A-ASSOCIATE-RJ, not an abort
    assert instances(node) == []
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []  # no traceback
    assert "association rejected from ? (127.0.0.1): calling AE title is blank" in caplog.messages
    [rejection] = collect_status(node.engine, utcnow()).rejected_last_24h.recent
    assert (rejection.calling_ae_title, rejection.status) == ("", 0x0103)
    assert rejection.reason == "association rejected: calling AE title is blank"
    # the node keeps serving, and a named sender gets through
    assert storescu(node.scp.port, [path]).returncode == 0
