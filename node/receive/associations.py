"""Which studies each association delivered, and how it ended, for release-triggered completion.

A PACS routing rule forwards a whole study in one association and ends it with an A-RELEASE once
every C-STORE has been answered (PS3.8 7.2: the requestor releases only when it has nothing more to
send). For the calling AE titles configured in ``completion.release_trigger_aes``, the SCP records
here, in the database (table ``associations``, so that every scheduler sharing a PostgreSQL queue
sees it):

* before the first instance of a study from an association is recorded, a row for that
  association and study (so a scheduler never sees the instance without its open association);
* when the association ends, its ending on each of its rows: ``released`` (EVT_RELEASED),
  ``aborted`` (EVT_ABORTED) or ``closed`` (the connection was lost: EVT_CONN_CLOSE without either).
  The first ending wins: a released association's connection close changes nothing.

Associations from other calling AE titles are not recorded (their instances' calling AE title is
enough to give their studies the quiet period), so receiving from modalities costs nothing more.
The rule that reads these rows: node/complete/completion.py. A node that dies leaves its open rows
open, so their studies wait for the quiet period, as before.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import cast

from pynetdicom import evt
from pynetdicom.association import Association as PynetdicomAssociation
from sqlalchemy import Engine, Table, delete, exists, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from node.clock import Clock, utcnow
from node.db import Association, Study
from node.states import AssociationEnding, StudyState

log = logging.getLogger(__name__)

_ASSOCIATIONS = cast(Table, Association.__table__)
_STUDIES = cast(Table, Study.__table__)


@dataclass
class _Delivering:
    """One association of a release-trigger sender, as far as it has delivered."""

    uid: str
    calling_ae_title: str
    studies: set[str] = field(default_factory=set)


class AssociationLog:
    """Records, for the calling AE titles in ``release_trigger_aes``, which studies each
    association delivered and how it ended, in the queue database ``engine``; ``clock`` gives the
    aware UTC time stamped on the rows. With no title configured it does nothing."""

    def __init__(
        self,
        engine: Engine,
        release_trigger_aes: Collection[str] = (),
        clock: Clock = utcnow,
        studies_released: Callable[[Collection[str]], object] | None = None,
    ) -> None:
        self.engine = engine
        # Told the studies of each association released and recorded (serve: their due time).
        self.studies_released = studies_released
        self.release_trigger_aes = frozenset(release_trigger_aes)
        self.clock = clock
        self._lock = threading.Lock()
        self._open: weakref.WeakKeyDictionary[PynetdicomAssociation, _Delivering] = (
            weakref.WeakKeyDictionary()
        )

    def delivering(
        self, assoc: PynetdicomAssociation, calling_ae_title: str, study_instance_uid: str
    ) -> None:
        """Before an instance of ``study_instance_uid`` received on ``assoc`` is recorded: the
        first time for this association and study, write its row (open). Raises SQLAlchemyError
        when the row cannot be written (the C-STORE then fails as any database error does)."""
        if calling_ae_title not in self.release_trigger_aes:
            return
        with self._lock:
            delivering = self._open.get(assoc)
            if delivering is None:
                delivering = self._open[assoc] = _Delivering(uuid.uuid4().hex, calling_ae_title)
            if study_instance_uid in delivering.studies:
                return
        with self.engine.begin() as conn:
            conn.execute(
                insert(_ASSOCIATIONS).values(
                    association_uid=delivering.uid,
                    study_instance_uid=study_instance_uid,
                    calling_ae_title=calling_ae_title,
                    started_at=self.clock(),
                )
            )
        with self._lock:
            delivering.studies.add(study_instance_uid)

    def ended(self, assoc: PynetdicomAssociation, ending: AssociationEnding) -> None:
        """``assoc`` ended by ``ending``: stamp its rows (once; later endings are ignored). Rows of
        studies no longer RECEIVING are removed instead: no completion decision needs them.
        Best effort: a database error leaves the rows open (their studies get the quiet period)."""
        with self._lock:
            delivering = self._open.pop(assoc, None)
        if delivering is None or not delivering.studies:
            return
        rows = _ASSOCIATIONS.c
        receiving = exists(
            select(_STUDIES.c.id).where(
                _STUDIES.c.study_instance_uid == rows.study_instance_uid,
                _STUDIES.c.state == StudyState.RECEIVING.value,
            )
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    delete(_ASSOCIATIONS).where(rows.association_uid == delivering.uid, ~receiving)
                )
                conn.execute(
                    update(_ASSOCIATIONS)
                    .where(rows.association_uid == delivering.uid, rows.ended_at.is_(None))
                    .values(ended_at=self.clock(), ending=ending.value)
                )
        except SQLAlchemyError as exc:
            log.warning(
                "cannot record that the association from %s %s (%s); its studies wait for the "
                "quiet period",
                delivering.calling_ae_title,
                ending,
                exc.__class__.__name__,
            )
            return
        if ending is AssociationEnding.RELEASED and self.studies_released is not None:
            self.studies_released(frozenset(delivering.studies))
        log.debug(
            "association from %s %s after delivering %d studies",
            delivering.calling_ae_title,
            ending,
            len(delivering.studies),
        )

    # -- the SCP's association events -------------------------------------------------------

    def on_released(self, event: evt.Event) -> None:
        """EVT_RELEASED: the peer released the association (A-RELEASE)."""
        self.ended(event.assoc, AssociationEnding.RELEASED)

    def on_aborted(self, event: evt.Event) -> None:
        """EVT_ABORTED: either side aborted the association (A-ABORT, A-P-ABORT)."""
        self.ended(event.assoc, AssociationEnding.ABORTED)

    def on_connection_closed(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: the connection closed. pynetdicom closes it before EVT_RELEASED or
        EVT_ABORTED may be handled: after a release it has marked the association released, after
        an A-ABORT from the peer the indication waits in the ACSE's queue; otherwise the
        connection was lost."""
        assoc = event.assoc
        if assoc.is_released:
            self.ended(assoc, AssociationEnding.RELEASED)
        elif assoc.is_aborted or assoc.acse.is_aborted("a-abort"):
            self.ended(assoc, AssociationEnding.ABORTED)
        else:
            self.ended(assoc, AssociationEnding.CLOSED)
