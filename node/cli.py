"""The `mura-node` command: serve, status, db upgrade, config.

Exit statuses: 0 success, 1 runtime failure (message on stderr), 2 invalid configuration or usage.
Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from node import __version__
from node.config import Config, load_config
from node.errors import (
    CheckpointError,
    ConfigError,
    DatabaseUnavailable,
    ListenError,
    ProfileError,
    SchemaError,
)
from node.logs import configure_logging

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
    status.add_argument("--state", help="list only studies in this state (e.g. FAILED, READY)")
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


def _fail(message: str, status: int) -> int:
    print(f"mura-node: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    configure_logging(config.service)
    try:
        return _run(args, config)
    except (ConfigError, ProfileError) as exc:
        return _fail(f"configuration error: {exc}", 2)
    except (SchemaError, ListenError, DatabaseUnavailable, CheckpointError) as exc:
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, config: Config) -> int:
    if args.command == "serve":
        from node.service import serve

        return serve(config)
    if args.command == "train":
        from node.training.recipe import TrainSettings, train

        cards = train(
            TrainSettings(
                train_csv=args.train_csv or args.data / "train_image_paths.csv",
                valid_csv=args.valid_csv or args.data / "valid_image_paths.csv",
                out=args.out,
                root=args.data.resolve().parent,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                image_size=args.image_size,
                workers=args.workers,
                seed=args.seed,
                imagenet=args.imagenet,
                ensemble=args.ensemble,
                device=args.device,
                precision=args.precision,
            )
        )
        print("model cards:", *[str(c.path) for c in cards], sep="\n  ")
        return 0
    if args.command == "evaluate":
        from node.training.evaluate import evaluate_split
        from node.training.metrics import markdown_table

        report = evaluate_split(
            args.cards, args.split, args.out, args.root, threshold_split=args.choose_thresholds_on
        )
        print(markdown_table(report), end="")
        return 0
    if args.command == "demo":
        from node.demo import run_demo

        return run_demo(config, args.dir)
    if args.command == "worker":
        import threading

        from node.service import StopSignals, check_model
        from node.worker import run_worker_process

        check_model(config.model)
        _check_database(config)  # a worker never migrates: `serve` or `db upgrade` does
        stop = threading.Event()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                run_worker_process(config, stop)
            except BaseException as exc:  # re-raised below, in the main thread
                failures.append(exc)

        with StopSignals() as signals:  # SIGTERM: finish the current study, then exit 0
            worker = threading.Thread(target=work, name="worker")
            worker.start()
            while worker.is_alive() and not signals.wait(0.5):
                pass
            stop.set()
            worker.join()
        if failures:
            raise failures[0]
        return 0
    if args.command == "retry":
        from node.db import make_engine
        from node.outbox import Outbox

        count = Outbox(make_engine(config.database_url)).retry_dead()
        print(f"re-queued {count} dead-lettered deliver{'y' if count == 1 else 'ies'}")
        return 0
    if args.command == "studies":
        return _study(config, args.uid, as_json=args.json)
    if args.command == "status":
        if args.watch is not None and args.watch <= 0:
            return _fail("--watch: the interval must be greater than 0 seconds", 2)
        return _status(
            config,
            as_json=args.json,
            limit=args.limit,
            state=args.state,
            study=args.study,
            watch=args.watch,
        )
    if args.command == "db":
        from node.db import make_engine, upgrade_database

        engine = make_engine(config.database_url)
        try:
            upgrade_database(engine)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            return _fail(f"cannot upgrade the database: {reason}", 1)
        print("database schema is up to date")
        return 0
    if args.command == "model":
        return _model(args, config)
    if args.command == "config":
        print(json.dumps(_config_dict(config), indent=2))
        return 0
    raise AssertionError(args.command)  # pragma: no cover


def _status(
    config: Config,
    *,
    as_json: bool,
    limit: int,
    state: str | None = None,
    study: str | None = None,
    watch: float | None = None,
) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from node.clock import utcnow
    from node.db import check_schema, safe_url
    from node.status import collect_status, render_status, status_view

    url = safe_url(config.database_url)
    engine = _open_readonly(config)

    def report() -> dict[str, Any]:
        return collect_status(
            engine, utcnow(), limit=max(1, limit), only_state=state, only_study=study
        )

    try:
        check_schema(engine)
        if watch is None:
            if as_json:
                print(json.dumps(report(), indent=2))
            elif sys.stdout.isatty():
                Console().print(status_view(report(), url))
            else:
                sys.stdout.write(render_status(report(), url))
            return 0
        try:
            if as_json:
                while True:
                    print(json.dumps(report()), flush=True)
                    time.sleep(watch)
            with Live(console=Console(), auto_refresh=False) as live:
                while True:
                    live.update(status_view(report(), url), refresh=True)
                    time.sleep(watch)
        except KeyboardInterrupt:
            return 0
    finally:
        engine.dispose()


def _check_database(config: Config) -> None:
    from node.db import check_schema, make_engine

    engine = make_engine(config.database_url)
    try:
        check_schema(engine)
    finally:
        engine.dispose()


def _model(args: argparse.Namespace, config: Config) -> int:
    from node.cards import pack_checkpoint, read_state_dict
    from node.engine import InferenceEngine

    if args.model_command == "pack":
        card = pack_checkpoint(
            read_state_dict(args.weights),
            args.out,
            name=args.name,
            version=args.version,
            input_size=args.input_size,
            training={"source": args.weights.name},
        )
        print(f"wrote {card.weights} and {card.path} (sha256 {card.sha256})")
        print(f'use it with: [model] cards = ["{card.path}"]')
        return 0
    engine = InferenceEngine.from_config(config.model)
    info = engine.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        "model: UNTRAINED (random weights; no model card configured)"
        if engine.untrained
        else "model:"
    )
    for card in info["models"]:
        print(f"  {card['name']} {card['version']}  ({card['card']})")
        print(f"    weights {card['weights']}")
        print(f"    sha256  {card['sha256']} (verified)")
        if card["metrics"]:
            print(f"    metrics {json.dumps(card['metrics'])}")
    print(
        f"ensemble of {info['ensemble_size']} model(s), input {info['input_size']} x {info['input_size']}"
    )
    print(
        f"device {info['device']} ({info['device_name']}), precision {info['precision']}, "
        f"channels_last {'on' if info['channels_last'] else 'off'}, CPU threads {info['cpu_threads']}"
    )
    print(
        f"batch size {info['batch_size']}; thresholds: "
        + ", ".join(f"{k} {v:g}" for k, v in info["thresholds"].items())
    )
    return 0


def _open_readonly(config: Config) -> Any:
    """A read-only engine on the configured database; a missing SQLite file is an error, not
    something to create."""
    from sqlalchemy.engine import make_url

    from node.db import make_engine

    parsed = make_url(config.database_url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database
        and not Path(parsed.database).exists()
    ):
        raise SchemaError(
            f"no database at {parsed.database}: has `mura-node serve` run with this configuration?"
        )
    return make_engine(config.database_url, readonly=True)


def _study(config: Config, uid: str, *, as_json: bool) -> int:
    from node.db import check_schema
    from node.status import render_history, study_history

    engine = _open_readonly(config)
    try:
        check_schema(engine)
        history = study_history(engine, uid)
    finally:
        engine.dispose()
    if history is None:
        return _fail(f"no study matches {uid!r}", 1)
    if "ambiguous" in history:
        return _fail(
            f"{uid!r} matches {len(history['ambiguous'])} studies; give more of the UID", 1
        )
    if as_json:
        print(json.dumps(history, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console

        from node.status import history_view

        Console().print(history_view(history))
    else:
        sys.stdout.write(render_history(history))
    return 0


def _config_dict(config: Config) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    data = plain(dataclasses.asdict(config))
    from node.db import safe_url

    if data["database"]["url"]:
        data["database"]["url"] = safe_url(data["database"]["url"])
    data["database"]["effective_url"] = safe_url(config.database_url)
    return dict(data)
