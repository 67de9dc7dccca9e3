"""The model's CPU threads when several worker processes share one machine's cores."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import torch

from node.operate.service import Node
from node.work.worker import cpu_threads_per_worker, run_worker_process
from tests.support.nodes import node_config


@pytest.mark.parametrize(
    ("configured", "workers", "default", "threads"),
    [
        (0, 1, 2, 2),  # one worker: PyTorch's default (physical cores, or OMP_NUM_THREADS)
        (0, 2, 2, 1),  # one per core: one thread each
        (0, 3, 2, 1),  # more workers than cores: never fewer than one thread
        (0, 3, 16, 5),  # the default shared out, rounded down
        (0, 0, 8, 8),  # no count given: as one worker
        (3, 2, 2, 3),  # model.cpu_threads set: taken as it is
    ],
)
def test_the_cores_are_shared_out_among_the_workers(
    configured: int, workers: int, default: int, threads: int
) -> None:
    assert cpu_threads_per_worker(configured, workers, default) == threads


def test_a_worker_process_runs_the_model_on_its_share_of_the_cores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = {"allow_untrained": True, "device": "cpu"}
    config = node_config(tmp_path, model=model, worker={"processes": 2})
    Node(config)  # the data directory and the database schema
    before = torch.get_num_threads()  # PyTorch's default in this process
    expected = max(1, before // 2)
    stop = threading.Event()
    stop.set()  # load the model, start, and stop at once
    try:
        with caplog.at_level(logging.INFO, logger="node.work.worker"):
            run_worker_process(config, stop, workers=2)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
    started = [r.getMessage() for r in caplog.records if "inference worker" in r.getMessage()]
    assert len(started) == 1
    assert f"on cpu, {expected} thread(s)" in started[0]
