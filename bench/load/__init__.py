"""Load: eight concurrent senders, hundreds of instances each, while studies are processed and dispatched.

A real node (`mura-node serve` in a subprocess; one inference worker with the untrained model,
the dispatcher; completion quiet period 2 s) receives ``--senders`` concurrent senders. Each
sender sends ``--instances`` synthetic 256 x 256 16-bit radiographs (CR and DX, BodyPartExamined
WRIST or HAND, so every study is eligible) in studies of ``--images-per-study`` images, one
association per study: a thread that runs dcmtk's storescu per study (default), or a process
with a pynetdicom SCU (``--sender pynetdicom``). While they send, the node completes, processes
and dispatches the earlier studies to a destination: a pynetdicom storage SCP in this process that
counts what it receives. Before the load, one warm-up study goes through the whole pipeline (model
loaded, destination reachable); it is not counted. The database is SQLite, or a fresh database
created on the PostgreSQL server of ``--database-url`` (dropped afterwards).

Measured in the same run:

- ingest instances/s of all senders together (first C-STORE to the last sender's end), against
  the same senders sending the same files to a bare pynetdicom SCP that writes and fsyncs each
  data set (bench/ingest.py's baseline): the ratio node/bare. The node receives beside its own
  worker and dispatcher on the same CPUs, the bare SCP does not (``--ingest-only`` runs the node
  with ``worker.processes = 0``); C-STORE round trips (median, 99th percentile, largest);
- time from the first C-STORE until every study is DONE and every result has arrived;
- the node's memory: RSS of `serve` and of each child process sampled every
  ``--sample-interval`` s (after the warm-up, after the ingest, peak, at the end), each one's
  VmHWM, the peak of the sampled sum, and PSS (shared pages counted once) at those moments.

Checked at the end (exit status 1 otherwise): every C-STORE was answered 0x0000 (node and bare),
none waited longer than ``--stall-s`` (then the node's thread stacks and the sockets' queues are
written to the working folder, which is kept); every instance is in the node's database with its
file; every study is DONE and was processed once; the destination received exactly one SR per
study and one SC per image (referencing that image), each SOP Instance UID once; no dead letter,
no refused C-STORE, no ERROR in the node's log; `serve` exited 0 on SIGTERM. Studies re-opened by
an image that arrived after the quiet period are counted, not failed.

    .venv/bin/python -m bench.load                                   # 8 senders x 200, SQLite
    .venv/bin/python -m bench.load --database-url postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python -m bench.load --ingest-only                     # receiving alone
"""
