"""Reading the StudyInstanceUID of a data set that has only partly arrived (node/receive/scp.py), as the
SCP does to hold a study while one of its images is in flight."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.receive.headers import study_of_partial_data_set
from tests.support.factory import make_radiograph


def part10(syntax: str) -> tuple[bytes, str, int]:
    """A data set as pynetdicom's temporary file holds it once whole (File Meta, then the data
    set), its StudyInstanceUID, and where the data set begins."""
    ds = make_radiograph(rows=16, columns=16)
    ds.file_meta.TransferSyntaxUID = syntax
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.dcm"
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
    fp = io.BytesIO(data)
    fp.seek(128 + 4)
    _read_file_meta_info(fp)
    return data, str(ds.StudyInstanceUID), fp.tell()


EXPLICIT = part10("1.2.840.10008.1.2.1")
IMPLICIT = part10(ImplicitVRLittleEndian)
DEFLATED = part10(DeflatedExplicitVRLittleEndian)


def read_part(data: bytes, cut: int) -> str | None:
    with tempfile.NamedTemporaryFile(suffix=".dcm") as part:
        part.write(data[:cut])
        part.flush()
        return study_of_partial_data_set(Path(part.name))


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from([EXPLICIT, IMPLICIT, DEFLATED]), fraction=st.floats(0, 1))
def test_a_partial_data_set_gives_its_study_or_nothing(
    case: tuple[bytes, str, int], fraction: float
) -> None:
    """Cut anywhere in the data set (pynetdicom writes the File Meta whole before it): the
    StudyInstanceUID whole, or None, never a cut-off or other value, and no pydicom warning
    (the SCP reads the part every second while it is in flight). Once the element after the
    StudyInstanceUID has begun to arrive, the UID."""
    data, uid, start = case
    cut = start + round(fraction * (len(data) - start))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = read_part(data, cut)
    assert found in (None, uid)
    if case is not DEFLATED:
        end_of_uid = data.index(uid.encode()) + len(uid) + len(uid) % 2
        if cut >= end_of_uid + 8:  # the next element's tag and length have arrived
            assert found == uid


# pydicom warns about a File Meta cut off inside a UID (pynetdicom writes it whole: not in use)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@settings(max_examples=50, deadline=None)
@given(case=st.sampled_from([EXPLICIT, IMPLICIT, DEFLATED]), cut=st.integers(0, 400))
def test_a_cut_anywhere_never_raises_or_misleads(case: tuple[bytes, str, int], cut: int) -> None:
    """Even inside the File Meta: None or the UID, no exception."""
    data, uid, _ = case
    assert read_part(data, cut) in (None, uid)


def test_a_whole_data_set_gives_its_study_in_every_syntax() -> None:
    for data, uid, _ in (EXPLICIT, IMPLICIT, DEFLATED):
        assert read_part(data, len(data)) == uid


def test_no_file_or_no_study_gives_nothing(tmp_path: Path) -> None:
    assert study_of_partial_data_set(tmp_path / "gone.dcm") is None
    ds = make_radiograph(rows=4, columns=4)
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert study_of_partial_data_set(tmp_path / "x.dcm") is None
