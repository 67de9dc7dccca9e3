"""A small pynetdicom storage SCP standing in for a PACS: it records every result it receives."""

from __future__ import annotations

import ssl
import threading
from collections import defaultdict

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from node.dispatch import RESULT_CLASSES
from tests.factory import free_port

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


class Destination:
    def __init__(self, ae_title: str = "PACS", ssl_context: ssl.SSLContext | None = None) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        # study UID -> SOP class -> SOP Instance UIDs, and how many C-STOREs in all
        self.received: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.stores = 0
        self.server: ThreadedAssociationServer | None = None
        self.ae = AE(ae_title=ae_title)
        for sop_class in RESULT_CLASSES:
            self.ae.add_supported_context(sop_class)

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self.lock:
            self.stores += 1
            self.received[str(ds.StudyInstanceUID)][str(ds.SOPClassUID)].add(str(ds.SOPInstanceUID))
        return 0x0000

    def start(self) -> None:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.ssl_context,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def stop(self) -> None:
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
