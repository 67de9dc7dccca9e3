"""The C-STORE handler: a received data set made durable, recorded, and answered with a status.

C-STORE statuses (also in docs/ingest.md):

======  ============================================================================
0x0000  stored durably (file fsynced and linked, directory fsynced, row committed), or a byte-identical re-send,
        or an object of an ignored SOP class (recorded, bytes not kept)
0xA700  out of resources: the data set is larger than ``dicom.max_dataset_bytes``, the data
        directory's free space is below ``storage.min_free_bytes``, or the file or its database row
        could not be made durable (nothing kept in any case)
0xA900  the data set's SOPClassUID / SOPInstanceUID differ from the C-STORE request
0xC000  the data set cannot be parsed, or an image's identifiers are missing or differ because
        its data set ends before the Pixel Data (truncated)
0xC001  a required identifier (Study, Series or SOP Instance UID in the data set, or the
        request's Affected SOP Class or Instance UID: node/receive/scp_requests.py) is missing or not a UID
======  ============================================================================

The handler parses the header only (``stop_before_pixels``): no pixel decoding, no inference.
Data sets arrive in pynetdicom's streamed mode (node/pynetdicom_patches/
``stream_data_sets_to_disk``), written to a temporary file instead of memory, so a large image is
never held whole in memory; the store then adopts that file (see node/storage.py).

While a data set is still arriving, `Transfers` tells which study it belongs to (read from the
part already received), so that node/receive/holds.py can keep that study from completing before the
image is stored. For release-triggered completion, the associations of the configured senders are
recorded before their instances (node/receive/associations.py). Reading headers, whole or in part:
node/receive/headers.py. The server around this
handler: node/receive/scp.py.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.exc import SQLAlchemyError

from node import metrics
from node.errors import (
    DatasetMismatch,
    InvalidIdentifier,
    OutOfResources,
    UnreadableDataset,
)
from node.profiles import Role, StorageProfile
from node.pynetdicom_patches import data_set_path, message_being_received
from node.receive.associations import AssociationLog
from node.receive.headers import Header, header_of, study_of_partial_data_set
from node.receive.ingest import IngestRecords, InstanceRecord
from node.receive.scp_requests import request_problem
from node.states import IngestOutcome
from node.storage import FileStore

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
MISMATCH = 0xA900
CANNOT_PARSE = 0xC000
BAD_IDENTIFIER = 0xC001


@dataclass
class _Transfer:
    """What the node knows about the data sets of one association."""

    last_study: str | None = None  # StudyInstanceUID of the last instance stored on it
    storing: str | None = None  # that of the data set the C-STORE handler is storing now


class Transfers:
    """Which studies have a data set in flight, over the associations of one SCP.

    A data set is in flight from its first P-DATA fragment until the C-STORE handler has answered
    it. Its study is the StudyInstanceUID in the part received so far; until that part holds it
    (the first fragments), that of the last instance stored on the same association.

    The message being assembled and its data set's temporary file come from
    node/pynetdicom_patches/ (`message_being_received`, `data_set_path`). The complete message
    then waits in the association's queue (milliseconds) for EVT_C_STORE,
    whose handler reports here what it stores (``storing``, ``stored``, ``finished``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_association: weakref.WeakKeyDictionary[Association, _Transfer] = (
            weakref.WeakKeyDictionary()
        )

    def _transfer(self, assoc: Association) -> _Transfer:
        transfer = self._by_association.get(assoc)
        if transfer is None:
            transfer = self._by_association[assoc] = _Transfer()
        return transfer

    def storing(self, assoc: Association, study_instance_uid: str) -> None:
        with self._lock:
            self._transfer(assoc).storing = study_instance_uid

    def stored(self, assoc: Association, study_instance_uid: str) -> None:
        with self._lock:
            self._transfer(assoc).last_study = study_instance_uid

    def finished(self, assoc: Association) -> None:
        with self._lock:
            self._transfer(assoc).storing = None

    def studies_in_flight(self, associations: Iterable[Association]) -> set[str]:
        """The StudyInstanceUIDs of the data sets in flight on ``associations`` (an idle
        association contributes nothing)."""
        found = set()
        for assoc in associations:
            with self._lock:
                transfer = self._transfer(assoc)
                storing, last = transfer.storing, transfer.last_study
            message = message_being_received(assoc)
            if storing is not None:
                found.add(storing)
            if message is not None:  # the next data set may arrive while the handler stores
                path = data_set_path(message)
                study = None if path is None else study_of_partial_data_set(path)
                if study or last:
                    found.add(cast(str, study or last))
        return found


# Outcomes that move a study's last arrival, and so its quiet period (a duplicate does not).
ANNOUNCED = frozenset({IngestOutcome.STORED, IngestOutcome.REPLACED})


class StoreHandler:
    """EVT_C_STORE: durable store, then database row, then success; statuses for everything else."""

    def __init__(
        self,
        store: FileStore,
        records: IngestRecords,
        profile: StorageProfile,
        threads: int = 16,
        *,
        max_dataset_bytes: int = 0,
        min_free_bytes: int = 0,
        associations: AssociationLog | None = None,
        on_stored: Callable[[str], object] | None = None,
    ) -> None:
        self.store = store
        self.records = records
        self.profile = profile
        self.max_dataset_bytes = max_dataset_bytes
        self.min_free_bytes = min_free_bytes
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="durable")
        self.transfers = Transfers()
        # The associations of release-trigger senders, recorded before their instances.
        self.associations = associations
        # Told the StudyInstanceUID of each instance stored (serve: the study's due time).
        self.on_stored = on_stored

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def __call__(self, event: evt.Event) -> Dataset:
        try:
            return self._answer(event)
        finally:
            self.transfers.finished(event.assoc)

    def _answer(self, event: evt.Event) -> Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            return _status(SUCCESS, self._store(event, calling))
        except DatasetMismatch as exc:
            return self._reject(calling, MISMATCH, str(exc))
        except InvalidIdentifier as exc:
            return self._reject(calling, BAD_IDENTIFIER, str(exc))
        except UnreadableDataset as exc:
            return self._reject(calling, CANNOT_PARSE, str(exc))
        except OutOfResources as exc:
            return self._reject(calling, OUT_OF_RESOURCES, str(exc))
        except Exception:
            log.exception("unexpected error while storing an instance")
            return self._reject(calling, OUT_OF_RESOURCES, "internal error while storing")

    def _reject(self, calling: str, code: int, reason: str) -> Dataset:
        metrics.instance_received(f"refused 0x{code:04X}")
        log.warning("C-STORE from %s refused with 0x%04X: %s", calling, code, reason)
        self.records.record_rejection(calling, code, reason)
        return _status(code, reason)

    def _store(self, event: evt.Event, calling: str) -> str | None:
        problem = request_problem(event)  # Affected SOP Class / Instance UID missing or invalid
        if problem is not None:
            raise (DatasetMismatch if problem.mismatch else InvalidIdentifier)(problem.comment)
        request = cast(C_STORE, event.request)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        role = self.profile.role(sop_class)
        if role is None:  # cannot happen with the negotiated contexts; kept as a guard
            raise DatasetMismatch(f"SOP class {sop_class} is not accepted")
        source = event.dataset_path  # pynetdicom's complete Part 10 file of what arrived
        self._check_resources(source)
        relative = self.store.new_name() if role is Role.ANALYSE else None
        # Making the file durable (fsync, link, fsync directory) runs on a helper thread while
        # this one parses the header and writes the row; the row commits only after the file
        # is durable, and the status is sent only after both.
        durable = None if relative is None else self.pool.submit(self.store.adopt, source, relative)
        try:
            header = header_of(source, sop_class, sop_instance, image=role is Role.ANALYSE)
            self.transfers.storing(event.assoc, header.study_instance_uid)
            record = _record(header, role, str(event.context.transfer_syntax), source, calling)
            same: Callable[[str | None], bool] = (
                (lambda _stored: True)  # ignored objects are not kept: a re-send is a no-op
                if relative is None
                else (lambda stored: self.store.same_content(stored, source))
            )
            try:
                if self.associations is not None:
                    self.associations.delivering(event.assoc, calling, header.study_instance_uid)
                result = self.records.record_instance(
                    record, relative, same, before_commit=lambda: durable and durable.result()
                )
            except SQLAlchemyError as exc:
                raise OutOfResources(f"database error: {exc.__class__.__name__}") from exc
            if durable is not None:
                durable.result()
        except BaseException:
            if durable is not None and relative is not None:
                wait([durable])
                self.store.remove(relative)
            raise
        self.transfers.stored(event.assoc, header.study_instance_uid)
        if self.on_stored is not None and result.outcome in ANNOUNCED:
            self.on_stored(header.study_instance_uid)
        metrics.instance_received(
            result.outcome if role is Role.ANALYSE else IngestOutcome.NOT_ANALYSED
        )
        if result.outcome is IngestOutcome.DUPLICATE:
            if relative is not None:
                self.store.remove(relative)
            log.debug("C-STORE from %s: identical re-send", calling)
            return "identical instance already stored"
        if result.obsolete_file:
            self.store.remove(result.obsolete_file)
        log.debug("C-STORE from %s: %s (%s)", calling, result.outcome, role)
        return None

    def _check_resources(self, source: Path) -> None:
        """Refuse, before anything is written, a data set over the size limit or a store whose
        free space is below the floor (the check runs for every C-STORE, so storing resumes by
        itself once space is freed)."""
        size = source.stat().st_size
        if self.max_dataset_bytes and size > self.max_dataset_bytes:
            raise OutOfResources(f"data set over the maximum size ({self.max_dataset_bytes} bytes)")
        if self.min_free_bytes and self.store.free_bytes() - size < self.min_free_bytes:
            raise OutOfResources("storage nearly full: below the node's free-space floor")


def _record(
    header: Header, role: Role, transfer_syntax: str, source: Path, calling: str
) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        role=role,
        transfer_syntax_uid=transfer_syntax,
        size_bytes=source.stat().st_size,
        calling_ae_title=calling[:16],
        modality=header.modality,
        body_part_examined=header.body_part_examined,
        protocol_name=header.protocol_name,
        series_description=header.series_description,
        study_description=header.study_description,
        anatomic_region=header.anatomic_region,
    )


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status
