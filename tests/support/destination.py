"""A small pynetdicom storage SCP standing in for a PACS: it records every result it receives.

Options make it a less accommodating PACS: only some SOP classes or transfer syntaxes, Study
Root C-FIND (answered from what it holds, or always with ``find_status``), or C-STOREs that it stores and then does not answer
(``hang``: the next N; the handler blocks until ``unblock`` is set or ``hang_s`` passed).
"""

from __future__ import annotations

import ssl
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.deliver.scu import RESULT_CLASSES
from tests.support.factory import free_port

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class Destination:
    def __init__(
        self,
        ae_title: str = "PACS",
        ssl_context: ssl.SSLContext | None = None,
        *,
        contexts: dict[str, Sequence[str]] | None = None,
        find: bool = False,
        find_status: int | None = None,
        hang_s: float = 10.0,
    ) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        # study UID -> SOP class -> SOP Instance UIDs, and how many C-STOREs in all
        self.received: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.stores = 0
        self.copies: Counter[str] = Counter()  # SOP Instance UID -> C-STOREs of it
        self.held: dict[str, tuple[str, str]] = {}  # SOP Instance UID -> (study, series)
        self.hang = 0
        self.hang_s = hang_s
        self.find_status = find_status  # a failure status for every C-FIND
        self.unblock = threading.Event()
        self.server: ThreadedAssociationServer | None = None
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        for sop_class, syntaxes in (contexts or {c: UNCOMPRESSED for c in RESULT_CLASSES}).items():
            self.ae.add_supported_context(sop_class, list(syntaxes))
        if find:
            self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        uid = str(ds.SOPInstanceUID)
        with self.lock:
            self.stores += 1
            self.copies[uid] += 1
            self.held[uid] = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            self.received[str(ds.StudyInstanceUID)][str(ds.SOPClassUID)].add(uid)
            hang = self.hang > 0
            self.hang -= hang
        if hang:  # stored, but the response comes too late or never
            self.unblock.wait(self.hang_s)
        return 0x0000

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        if self.find_status is not None:
            yield self.find_status, None
            return
        if str(query.get("QueryRetrieveLevel", "")) != "IMAGE":
            yield 0xA900, None
            return
        with self.lock:
            held = [(uid, study, series) for uid, (study, series) in self.held.items()]
        for uid, study, series in held:
            values = dict(zip(keys, (study, series, uid), strict=True))
            if all(str(query.get(k, "") or values[k]) == values[k] for k in keys):
                answer = Dataset()
                answer.QueryRetrieveLevel = "IMAGE"
                for key, value in values.items():
                    setattr(answer, key, value)
                yield 0xFF00, answer

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, self._on_find)],
        )

    def stop(self) -> None:
        self.unblock.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def reports(self, study_uid: str) -> set[str]:
        with self.lock:
            return set(self.received.get(study_uid, {}).get(SR_CLASS, set()))

    def heatmaps(self, study_uid: str) -> set[str]:
        with self.lock:
            studies = self.received.get(study_uid, {})
            return {uid for cls, uids in studies.items() if cls != SR_CLASS for uid in uids}
