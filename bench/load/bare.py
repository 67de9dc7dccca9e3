"""The baseline: the same senders to a bare pynetdicom SCP that writes and fsyncs each data set."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import PDU, ROOT, free_port, wait_listening
from bench.load.corpus import Study
from bench.load.senders import SenderResult, Stall, send_all

BARE_SCP = """
import os, sys, uuid
from pynetdicom import AE, AllStoragePresentationContexts, evt
out = sys.argv[2]
def handle(event):
    path = os.path.join(out, uuid.uuid4().hex + ".dcm")
    with open(path, "wb") as fp:
        fp.write(event.encoded_dataset())
        fp.flush()
        os.fsync(fp.fileno())
    return 0x0000
ae = AE(ae_title="BARE")
ae.maximum_pdu_size = int(sys.argv[3])
ae.maximum_associations = int(sys.argv[4])
ae.require_called_aet = False
ae.supported_contexts = AllStoragePresentationContexts
ae.start_server(("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=[(evt.EVT_C_STORE, handle)])
"""


@dataclass
class BareRun:
    seconds: float
    results: list[SenderResult]
    stalls: list[Stall]
    files: int  # what the bare SCP wrote


def run_bare(workdir: Path, corpus: list[list[Study]], args: argparse.Namespace) -> BareRun:
    port = free_port()
    out = workdir / "bare"
    out.mkdir()
    command = [sys.executable, "-c", BARE_SCP, str(port), str(out), str(PDU), str(len(corpus) + 8)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, process, timeout=120)
        stacks = workdir / "bare-stacks"
        stacks.mkdir()
        start, end, results, stalls = send_all(corpus, port, "BARE", args, stacks)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return BareRun(end - start, results, stalls, len(list(out.iterdir())))
