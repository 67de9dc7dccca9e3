"""The node as SCU toward a destination: what it proposes, what became of the association (in
words an administrator can act on), C-STORE of a result, and a C-FIND that asks whether the
destination already holds an object.

Presentation contexts proposed (PS3.7 D.3.3.4, PS3.4 B and C):

- every result class (Comprehensive SR, Secondary Capture, Grayscale Softcopy Presentation
  State) with Explicit VR Little Endian and
  Implicit VR Little Endian in one context: the node writes its results uncompressed in Explicit
  VR Little Endian, and pynetdicom's ``send_c_store`` converts such a data set to Implicit VR
  Little Endian when that is the syntax the destination accepted (``_get_valid_context`` prefers
  an exact match and converts only between uncompressed little endian syntaxes). Explicit VR Big
  Endian (retired) and Deflated are not proposed;
- Study Root Query/Retrieve Information Model - FIND with the same two syntaxes, only on
  associations that carry a delivery whose earlier attempt got no response.

pynetdicom 3.0.4 reports a failed association only as flags on the Association and logs the
rest; here the reason is kept: the socket error of a failed connection (refused, timed out,
name not resolved, TLS certificate not verified), the A-ASSOCIATE-RJ reason, an A-ABORT, or no
answer within ``dispatch.timeout_s``. pynetdicom aborts an association on which the destination
accepted no presentation context; that is reported per SOP class.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.presentation import PresentationContext, build_context

from node.config import Destination
from node.pynetdicom_patches import ReportingAE, ReportingSocket, files_sent_as_written

log = logging.getLogger(__name__)

COMPREHENSIVE_SR = ComprehensiveSRStorage  # the SR (ResultKind.SR)
SECONDARY_CAPTURE = SecondaryCaptureImageStorage  # heatmaps and the summary image
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE = GrayscaleSoftcopyPresentationStateStorage  # GSPS
RESULT_CLASSES = (COMPREHENSIVE_SR, SECONDARY_CAPTURE, GRAYSCALE_SOFTCOPY_PRESENTATION_STATE)
RESULT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Study Root Query/Retrieve Information Model - FIND (pydicom 3.0 has no constant for it)
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success and the storage warnings
FIND_PENDING = frozenset({0xFF00, 0xFF01})  # C-FIND: a match follows (PS3.4 C.4.1.1.4)


def class_name(uid: str) -> str:
    """The SOP class's name from the UID dictionary, or the UID itself."""
    name = UID(uid).name
    return name if name != uid else uid


def requested_contexts(find: bool) -> list[PresentationContext]:
    """The contexts the node proposes; ``find`` adds Study Root FIND."""
    classes = [*RESULT_CLASSES, *([STUDY_ROOT_FIND] if find else [])]
    return [build_context(uid, list(RESULT_TRANSFER_SYNTAXES)) for uid in classes]


def _reason(exc: OSError | None, timeout: float) -> str:
    if exc is None:
        return "no connection (reason not reported)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate not verified ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    return exc.strerror or str(exc) or exc.__class__.__name__


@dataclass
class Link:
    """One association to one destination, or why there is none (``error``)."""

    destination: Destination
    assoc: Association | None
    error: str | None = None
    refused_classes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_open(self) -> bool:
        return self.assoc is not None and self.assoc.is_established

    def refusal(self, sop_class: str) -> str | None:
        """Why an object of ``sop_class`` cannot go on this association, or None."""
        if self.error is not None:
            return self.error
        if sop_class in self.refused_classes or not self._accepted(sop_class):
            return (
                f"{self.destination.name} accepted no presentation context for "
                f"{class_name(sop_class)}"
            )
        return None

    def _accepted(self, sop_class: str, transfer_syntax: str | None = None) -> bool:
        """Whether a presentation context for ``sop_class`` was accepted (with
        ``transfer_syntax``, when given)."""
        assoc = self.assoc
        return assoc is not None and any(
            cx.abstract_syntax == sop_class
            and cx.as_scu
            and transfer_syntax in (None, cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
        )

    @property
    def offers_find(self) -> bool:
        return self.is_open and self._accepted(STUDY_ROOT_FIND)

    def store(self, path: Path) -> Dataset:
        """C-STORE of a result file; the response's status data set, empty when none came
        (timeout, abort, connection lost: pynetdicom aborts the association then).

        When the destination accepted the file's own transfer syntax (Explicit VR Little Endian),
        the data set goes out byte for byte as written and checked, read from the file in
        chunks (`files_sent_as_written`); otherwise it is decoded and converted to the syntax
        accepted."""
        assert self.assoc is not None
        meta = read_file_meta_info(path)
        sop_class, syntax = meta.get("MediaStorageSOPClassUID"), meta.get("TransferSyntaxUID")
        if sop_class and syntax and self._accepted(str(sop_class), str(syntax)):
            with files_sent_as_written():
                try:
                    return cast(Dataset, self.assoc.send_c_store(path))
                except Exception:
                    # The file is read while its data set goes out: after an error part of a
                    # message may be with the peer, so this association carries nothing more.
                    self.assoc.abort()
                    raise
        return cast(Dataset, self.assoc.send_c_store(dcmread(path)))

    def holds(self, path: Path) -> bool | None:
        """Whether the destination holds the object in ``path`` (C-FIND at IMAGE level on its
        Study Root information model, keys from the file's header), or None when it did not
        say (a failure status, or no response)."""
        assert self.assoc is not None
        header = dcmread(path, stop_before_pixels=True)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = header.StudyInstanceUID
        query.SeriesInstanceUID = header.SeriesInstanceUID
        query.SOPInstanceUID = header.SOPInstanceUID
        found = False
        for status, identifier in self.assoc.send_c_find(query, STUDY_ROOT_FIND):
            code = int(status.Status) if "Status" in status else None
            if code in FIND_PENDING:
                found = found or (
                    identifier is not None
                    and str(identifier.get("SOPInstanceUID", "")) == header.SOPInstanceUID
                )
            elif code == 0x0000:
                return found
            else:
                return None
        return None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


class SCU:
    """The node's requesting AE (one per dispatcher), with its timeouts."""

    def __init__(self, ae_title: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.ae = ReportingAE(ae_title=ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self.ae.connection_timeout = timeout_s

    def open(
        self, destination: Destination, tls: ssl.SSLContext | None, *, find: bool = False
    ) -> Link:
        """Associate with ``destination``; the Link says what became of it."""
        received: list[Any] = []
        where = f"{destination.host}:{destination.port}"
        try:
            assoc = self.ae.associate(
                destination.host,
                destination.port,
                contexts=requested_contexts(find),
                ae_title=destination.ae_title,
                tls_args=(tls, destination.host) if tls is not None else None,
                evt_handlers=[(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))],
            )
        except OSError as exc:  # e.g. an address that cannot be resolved, on some platforms
            return Link(destination, None, f"cannot connect to {where}: {_reason(exc, 0)}")
        if assoc.is_established:
            return Link(destination, assoc)
        return Link(destination, None, *self._failure(destination, assoc, received))

    def _failure(
        self, destination: Destination, assoc: Association, received: list[Any]
    ) -> tuple[str | None, frozenset[str]]:
        name, where = destination.name, f"{destination.host}:{destination.port}"
        sock = assoc.dul.socket
        if isinstance(sock, ReportingSocket) and not sock.connected:
            return f"cannot connect to {where}: {_reason(sock.connect_error, self.timeout_s)}", (
                frozenset()
            )
        answer = assoc.acceptor.primitive
        if assoc.is_rejected and isinstance(answer, A_ASSOCIATE):
            return (
                f"{name} rejected the association: {answer.reason_str} "
                f"({answer.result_str}, {answer.source_str})"
            ), frozenset()
        if isinstance(answer, A_ASSOCIATE) and answer.result == 0x00:
            # accepted, but with no presentation context: pynetdicom aborted it
            return None, frozenset(RESULT_CLASSES)
        if any(isinstance(p, A_ABORT) for p in received):
            return f"{name} aborted the association request", frozenset()
        if any(isinstance(p, A_P_ABORT) for p in received):
            return f"{name} closed the connection during association negotiation", frozenset()
        return (
            f"{name} did not answer the association request within {self.timeout_s:g} s",
            frozenset(),
        )
