"""C-STORE requests whose Affected SOP Class UID or Affected SOP Instance UID is missing, empty
or not a UID, sent by a pynetdicom SCU with a hand-built C-STORE-RQ primitive over a real
association to a node in this process (node/receive/scp_requests.py says what pynetdicom does with them
alone). Each must get 0xC001 with an ErrorComment naming the problem, be recorded as a refused
C-STORE, leave no file in the data directory or in pynetdicom's temporary directory (the data
directory's tmp/, as under `serve`), and leave the node serving.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.db import IngestRejection, Instance
from node.operate.service import Node
from node.receive.scp_requests import is_uid, problem_of
from tests.support.factory import CR, make_radiograph, storescu, write

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

NO_RESPONSE = (-1, "")
ABSENT = None  # the element is not in the command set


def body(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def send_request(
    port: int, sop_class: str | None, sop_instance: str | None, ds: Dataset
) -> tuple[int, str]:
    """One C-STORE-RQ with exactly these Affected SOP Class / Instance UID values (None: the
    element is left out; pynetdicom's setters, which would refuse some, are bypassed)."""
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="MURA_NODE")
    assert assoc.is_established
    request = C_STORE()
    request.MessageID = 7
    request.Priority = 2
    request._affected_sop_class_uid = None if sop_class is None else UID(sop_class)
    request._affected_sop_instance_uid = None if sop_instance is None else UID(sop_instance)
    request.DataSet = BytesIO(body(ds))
    context_id = assoc.accepted_contexts[0].context_id
    assert context_id is not None
    # as Association.send_c_store does: pause the reactor, send, wait for the response
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if assoc.is_established:
        assoc.release()
    if response is None:
        return NO_RESPONSE
    return int(response.Status), str(response.ErrorComment or "")


@pytest.fixture
def node(make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch) -> Node:
    node = make_node()
    # As `serve` does: pynetdicom's temporary files go into the data directory's tmp/.
    monkeypatch.setattr(tempfile, "tempdir", str(node.store.tmp))
    return node


def counts(node: Node) -> tuple[int, int]:
    with Session(node.engine) as session:
        instances = session.scalar(select(func.count()).select_from(Instance))
        refused = session.scalar(select(func.count()).select_from(IngestRejection))
        return int(instances or 0), int(refused or 0)


def assert_nothing_kept(node: Node) -> None:
    assert list(node.store.tmp.iterdir()) == [], "pynetdicom's temporary file was left behind"
    assert list(node.store.instances.rglob("*.dcm")) == []


SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.777"
CASES = [
    (CR, ABSENT, "C-STORE request without Affected SOP Instance UID"),
    (CR, "", "C-STORE request without Affected SOP Instance UID"),
    (ABSENT, SOP_INSTANCE, "C-STORE request without Affected SOP Class UID"),
    (ABSENT, ABSENT, "C-STORE request without Affected SOP Class and Instance UIDs"),
    (CR, "1.2.3.abc", "Affected SOP Instance UID in the request is not a valid UID"),
    (CR, "1." * 32 + "1", "Affected SOP Instance UID in the request is not a valid UID"),
    (ABSENT, "1.2.3.abc", "Affected SOP Class UID missing, SOP Instance UID not valid"),
    (
        "1.2.840.10008.5.1.4.1.1.x",
        SOP_INSTANCE,
        "Affected SOP Class UID in the request is not a valid UID",
    ),
    ("1." * 32 + "1", SOP_INSTANCE, "Affected SOP Class UID in the request is not a valid UID"),
]


@pytest.mark.parametrize(("sop_class", "sop_instance", "comment"), CASES)
def test_request_without_valid_affected_uids_gets_c001_and_leaves_nothing(
    node: Node, tmp_path: Path, sop_class: str | None, sop_instance: str | None, comment: str
) -> None:
    ds = make_radiograph(rows=16, columns=16)
    ds.SOPInstanceUID = SOP_INSTANCE
    assert send_request(node.scp.port, sop_class, sop_instance, ds) == (0xC001, comment)
    assert_refused_then_serving(node, tmp_path, comment)


def test_request_for_another_class_than_the_context_gets_a900(node: Node, tmp_path: Path) -> None:
    # pynetdicom alone aborts the association (no service class for it), leaving the file
    ds = make_radiograph(rows=16, columns=16)
    ds.SOPClassUID = "1.2.3.4"
    comment = "Affected SOP Class UID is not the presentation context's"
    assert send_request(node.scp.port, "1.2.3.4", str(ds.SOPInstanceUID), ds) == (0xA900, comment)
    assert_refused_then_serving(node, tmp_path, comment)


def assert_refused_then_serving(node: Node, tmp_path: Path, comment: str) -> None:
    assert counts(node) == (0, 1)
    with Session(node.engine) as session:
        assert session.scalars(select(IngestRejection.reason)).one() == comment
    assert_nothing_kept(node)
    # the node keeps serving, on the next association
    good = write(make_radiograph(rows=16, columns=16), tmp_path / "good.dcm")
    assert storescu(node.scp.port, [good]).returncode == 0
    assert counts(node) == (1, 1)
    assert list(node.store.tmp.iterdir()) == []


def test_a_valid_request_on_the_same_path_is_stored(node: Node) -> None:
    ds = make_radiograph(rows=16, columns=16)
    assert send_request(node.scp.port, CR, str(ds.SOPInstanceUID), ds) == (0x0000, "")
    assert counts(node) == (1, 0)
    assert list(node.store.tmp.iterdir()) == []


# Values of either Affected UID: absent, empty, valid, or any short text of the characters a
# UID is made of and a few that it is not; none of it may cost more than a refusal.
uid_text = st.text(alphabet="0123456789.a \0", max_size=70)
values = st.one_of(st.none(), st.just(""), st.just(CR), uid_text)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(sop_class=values, sop_instance=values)
def test_any_affected_uids_get_a_status_and_leave_nothing(
    node: Node, sop_class: str | None, sop_instance: str | None
) -> None:
    # what the node reads: the command set as it arrives (pydicom strips padding off a UI)
    command = Dataset()
    if sop_class is not None:
        command.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        command.AffectedSOPInstanceUID = sop_instance
    command = decode(BytesIO(encode(command, True, True)), True, True)
    ds = make_radiograph(rows=16, columns=16)
    if is_uid(command.get("AffectedSOPInstanceUID")):
        ds.SOPInstanceUID = command.AffectedSOPInstanceUID  # so that a valid request is stored
    status, comment = send_request(node.scp.port, sop_class, sop_instance, ds)
    problem = problem_of(command, CR)
    if problem is None:
        assert (status, comment) == (0x0000, "")
    else:  # 0xA900 for a UID that is not the negotiated class
        assert (status, comment) == (0xA900 if problem.mismatch else 0xC001, problem.comment)
    assert list(node.store.tmp.iterdir()) == []


@given(
    sop_class=st.one_of(st.none(), st.text(max_size=80)),
    sop_instance=st.one_of(st.none(), st.text(max_size=80)),
)
@example(sop_class=None, sop_instance="0\r")  # pydicom strips the white space off a UI value
def test_problem_names_what_is_wrong_in_at_most_64_characters(
    sop_class: str | None, sop_instance: str | None
) -> None:
    command = Dataset()
    if sop_class is not None:
        command.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        command.AffectedSOPInstanceUID = sop_instance
    problem = problem_of(command)
    # as pydicom holds the values (a UI value loses trailing padding and white space)
    read = {name: command.get(f"AffectedSOP{name}UID") for name in ("Class", "Instance")}
    wrong = [name for name, value in read.items() if not is_uid(str(value or "").rstrip("\0 "))]
    if not wrong:
        assert problem is None
        return
    assert problem is not None and len(problem.comment) <= 64
    assert all(name in problem.comment for name in wrong)
