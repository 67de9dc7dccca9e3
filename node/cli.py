"""The `mura-node` command line: parsing, configuration, logging, and a table of commands.

Commands (each a function in node/commands.py, looked up in ``COMMANDS``):

- ``serve``: receive studies (C-STORE SCP), complete them, infer and deliver the results;
- ``worker``: an inference worker only (e.g. on a GPU machine), beside a `serve`;
- ``demo``: the whole pipeline on a generated study, in about a minute;
- ``status``: the study queue (``--json``, ``--watch``, ``--state``, ``--study``, ``--limit``);
- ``studies show UID``: one study's arrivals, decisions, results and deliveries;
- ``retry``: re-queue dead-lettered deliveries;
- ``db upgrade``: create or upgrade the database schema;
- ``model info``: load the configured model and print its cards, hashes and device;
- ``model pack``: turn a state dict into safetensors weights and a model card;
- ``config show``: print the effective configuration;
- ``train``: train DenseNet-169 checkpoints with the MURA recipe;
- ``evaluate``: study-level kappa, AUROC, sensitivity and specificity of model cards;
- ``synth OUT``: write a small synthetic MURA-layout data set for trying ``train`` and ``evaluate``.

Exit statuses: 0 success, 1 runtime failure (message on stderr), 2 invalid configuration or usage.
Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from node import __version__
from node.commands import COMMANDS, fail
from node.config import load_config
from node.errors import ConfigError, MuraNodeError, ProfileError, UsageError
from node.logs import configure_logging
from node.states import StudyState

log = logging.getLogger("node")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML configuration file (default: ./mura-node.toml if present, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="mura-node",
        description="DICOM node for abnormality detection in upper-extremity radiographs (MURA).",
    )
    parser.add_argument("--version", action="version", version=f"mura-node {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve", parents=[common], help="receive studies (C-STORE SCP) and queue complete ones"
    )
    status = commands.add_parser("status", parents=[common], help="show the study queue")
    status.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    status.add_argument(
        "--state",
        type=str.upper,
        choices=[state.value for state in StudyState],
        help="list only studies in this state (e.g. FAILED, READY)",
    )
    status.add_argument("--study", help="list only studies whose UID contains this text")
    status.add_argument(
        "--limit", type=int, default=20, help="how many recent studies to list (default 20)"
    )
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C; with --json, one JSON line each time",
    )
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run the whole pipeline on a generated study, in about a minute",
    )
    demo.add_argument("--dir", type=Path, help="working folder (default: a new temporary folder)")
    training = commands.add_parser(
        "train", parents=[common], help="train DenseNet-169 checkpoints with the MURA recipe"
    )
    training.add_argument("--data", type=Path, required=True, help="the MURA-v1.1 folder")
    training.add_argument("--train-csv", type=Path, help="default: DATA/train_image_paths.csv")
    training.add_argument("--valid-csv", type=Path, help="default: DATA/valid_image_paths.csv")
    training.add_argument(
        "--out", type=Path, required=True, help="output folder (resumes if it holds state.pt)"
    )
    training.add_argument("--epochs", type=int, default=10)
    training.add_argument("--batch-size", type=int, default=8)
    training.add_argument("--learning-rate", type=float, default=1e-4)
    training.add_argument("--image-size", type=int, default=320)
    training.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument(
        "--imagenet", type=Path, help="local DenseNet-169 ImageNet weights (.pth)"
    )
    training.add_argument("--ensemble", type=int, default=5, help="best epochs to pack (default 5)")
    training.add_argument("--device", default="auto")
    training.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16",
        help="on CUDA (default bf16 autocast)",
    )
    assess = commands.add_parser(
        "evaluate", parents=[common], help="study-level kappa, AUROC, sensitivity, specificity"
    )
    assess.add_argument(
        "--split", type=Path, required=True, help="an image-paths CSV (MURA layout)"
    )
    assess.add_argument("--cards", nargs="+", required=True, help="model card files (an ensemble)")
    assess.add_argument(
        "--out", type=Path, required=True, help="folder for report.md and report.json"
    )
    assess.add_argument(
        "--root", type=Path, help="where the CSV's paths start (default: its parent's parent)"
    )
    assess.add_argument(
        "--choose-thresholds-on",
        type=Path,
        metavar="CSV",
        help="choose per-study-type thresholds on this (validation) split and write them into the cards",
    )
    synth = commands.add_parser(
        "synth",
        parents=[common],
        help="write a small synthetic MURA-layout data set (OUT/MURA-v1.1) for train and evaluate",
    )
    synth.add_argument("out", type=Path, metavar="OUT", help="folder to write MURA-v1.1 into")
    synth.add_argument(
        "--studies", type=int, default=20, help="training studies per study type (default 20)"
    )
    synth.add_argument("--images", type=int, default=2, help="images per study (default 2)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--label-noise",
        type=float,
        default=0.15,
        help="share of studies labelled against their images (default 0.15)",
    )
    commands.add_parser(
        "worker", parents=[common], help="run an inference worker only (e.g. on a GPU machine)"
    )
    commands.add_parser("retry", parents=[common], help="re-queue dead-lettered deliveries")
    studies = commands.add_parser("studies", help="one study in detail")
    studies_commands = studies.add_subparsers(
        dest="studies_command", required=True, metavar="ACTION"
    )
    show = studies_commands.add_parser(
        "show", parents=[common], help="a study's arrivals, decisions, results and deliveries"
    )
    show.add_argument("uid", help="StudyInstanceUID, or a unique beginning or end of it")
    show.add_argument("--json", action="store_true")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_commands.add_parser("upgrade", parents=[common], help="create or upgrade the schema")
    model = commands.add_parser("model", help="the inference model")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model_commands.add_parser(
        "info",
        parents=[common],
        help="load the configured model and print its cards, hashes, device",
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
    pack = model_commands.add_parser(
        "pack", parents=[common], help="turn a state dict into safetensors weights and a model card"
    )
    pack.add_argument("weights", type=Path, help="a .safetensors file or a .pt state dict")
    pack.add_argument("--name", required=True)
    pack.add_argument("--version", required=True)
    pack.add_argument("--out", type=Path, default=Path("models"), help="folder (default: models)")
    pack.add_argument("--input-size", type=int, default=320)
    config = commands.add_parser("config", help="configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser("show", parents=[common], help="print the effective configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module's docstring).

    Every expected failure ends here as one line on stderr: the node's own errors (``MuraNodeError``
    and its kinds), a file that cannot be read or written (``OSError``), a database that refuses
    (SQLAlchemy's errors, with the reason only). A traceback means a bug."""
    from sqlalchemy.exc import SQLAlchemyError

    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}", 2)
    configure_logging(config.service)
    action = getattr(args, f"{args.command}_command", None)
    command = COMMANDS[args.command if action is None else f"{args.command} {action}"]
    try:
        return command(args, config)
    except (ConfigError, ProfileError) as exc:
        return fail(f"configuration error: {exc}", 2)
    except UsageError as exc:
        return fail(str(exc), 2)
    except MuraNodeError as exc:
        return fail(str(exc), 1)
    except OSError as exc:
        return fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)
    except SQLAlchemyError as exc:
        from node.db import database_error_reason, safe_url

        return fail(f"database {safe_url(config.database_url)}: {database_error_reason(exc)}", 1)
    except KeyboardInterrupt:
        return 130
