"""The destination: a pynetdicom storage SCP in this process that counts the SRs and SCs it
receives, per study."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

from bench.common import free_port
from bench.load.corpus import Study

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


class Sink:
    """A pynetdicom storage SCP standing in for the PACS: counts every result it receives."""

    def __init__(self) -> None:
        from pynetdicom import AE

        self.port = free_port()
        self.lock = threading.Lock()
        self.stores: Counter[str] = Counter()  # SOP Instance UID -> C-STOREs received
        self.by_study: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.source_of: dict[str, str] = {}  # SC -> the image it references
        self.last_at = 0.0
        self.ae = AE(ae_title="SINK")
        self.ae.maximum_associations = 16
        for sop_class in (SR_CLASS, SC_CLASS):
            self.ae.add_supported_context(sop_class)
        self.server: Any = None
        self.warm_up: set[str] = set()  # the warm-up study, not counted

    def _on_store(self, event: Any) -> int:
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        sop_class = str(request.AffectedSOPClassUID)
        ds = event.dataset
        source = None
        if sop_class == SC_CLASS and "SourceImageSequence" in ds:
            source = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        with self.lock:
            self.stores[uid] += 1
            self.by_study[str(ds.StudyInstanceUID)][sop_class].add(uid)
            if source is not None:
                self.source_of[uid] = source
            self.last_at = time.monotonic()
        return 0x0000

    def start(self) -> None:
        from pynetdicom import evt

        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def complete(self, studies: list[Study]) -> bool:
        with self.lock:
            return all(
                len(self.by_study.get(s.uid, {}).get(SR_CLASS, ())) >= 1
                and len(self.by_study.get(s.uid, {}).get(SC_CLASS, ())) >= len(s.sop_uids)
                for s in studies
            )

    def problems(self, studies: list[Study]) -> list[str]:
        """What differs from one SR per study and one SC per image, each received once."""
        found = []
        with self.lock:
            wrong_reports, wrong_heatmaps = [], []
            for study in studies:
                got = self.by_study.get(study.uid, {})
                reports = got.get(SR_CLASS, set())
                heatmaps = got.get(SC_CLASS, set())
                if len(reports) != 1:
                    wrong_reports.append(f"{len(reports)} SR")
                sources = {self.source_of.get(uid) for uid in heatmaps}
                if len(heatmaps) != len(study.sop_uids) or sources != set(study.sop_uids):
                    wrong_heatmaps.append(f"{len(heatmaps)} SC for {len(study.sop_uids)} images")
            if wrong_reports:
                found.append(
                    f"destination: {len(wrong_reports)} study(ies) without exactly one SR "
                    f"(e.g. {', '.join(sorted(set(wrong_reports))[:3])})"
                )
            if wrong_heatmaps:
                found.append(
                    f"destination: {len(wrong_heatmaps)} study(ies) without one SC per image "
                    f"(e.g. {', '.join(sorted(set(wrong_heatmaps))[:3])})"
                )
            repeated = {uid: n for uid, n in self.stores.items() if n > 1}
            if repeated:
                found.append(f"destination: {len(repeated)} object(s) received more than once")
            stray = set(self.by_study) - {s.uid for s in studies} - self.warm_up
            if stray:
                found.append(f"destination: results for {len(stray)} study(ies) that were not sent")
        return found
