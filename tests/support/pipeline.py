"""A node, a worker and a dispatcher in one process, driven step by step by a test's clock."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db import Dispatch, Result, Study
from node.deliver.dispatch import Dispatcher
from node.operate.service import Node
from node.work.worker import Worker
from tests.support.nodes import FakeClock


class Pipeline:
    """Complete, process and deliver studies by hand: no timer runs."""

    def __init__(
        self, node: Node, worker: Worker, dispatcher: Dispatcher, clock: FakeClock
    ) -> None:
        self.node, self.worker, self.dispatcher, self.clock = node, worker, dispatcher, clock

    def process(self) -> bool:
        """The worker takes one study and its results are recorded."""
        started = self.worker.run_once()
        self.worker.drain()
        return started

    def complete(self) -> None:
        self.clock.advance(3600)
        self.node.scheduler.tick()

    def study(self, uid: str) -> Study:
        with Session(self.node.engine) as session:
            return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()

    def results(self, uid: str) -> list[Result]:
        with Session(self.node.engine) as session:
            return list(
                session.scalars(
                    select(Result)
                    .join(Study)
                    .where(Study.study_instance_uid == uid)
                    .order_by(Result.id)
                )
            )

    def dispatches(self) -> list[Dispatch]:
        with Session(self.node.engine) as session:
            return list(session.scalars(select(Dispatch).order_by(Dispatch.id)))
