"""One function per `mura-node` command: ``(args, config) -> exit status``.

node/cli.py parses the command line and looks the command up in :data:`COMMANDS`; errors are
raised (ConfigError, SchemaError, OSError, ...) and turned into messages and exit statuses
there. A function here prints its result on stdout and, for an expected failure, a one-line
message on stderr via :func:`fail`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlalchemy.engine import Engine

from node.config import Config
from node.errors import SchemaError, UsageError

Command = Callable[[argparse.Namespace, Config], int]


def fail(message: str, status: int) -> int:
    """Print ``mura-node: <message>`` on stderr as one line (a message of several lines is joined
    with "; "); returns ``status``."""
    text = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"mura-node: {text}", file=sys.stderr)
    return status


def serve(args: argparse.Namespace, config: Config) -> int:
    """`serve`: receive, complete, infer and deliver until SIGINT or SIGTERM."""
    from node.operate.service import serve

    return serve(config)


def worker(args: argparse.Namespace, config: Config) -> int:
    """`worker`: one inference worker only (e.g. on a GPU machine)."""
    from node.operate.service import run_worker

    return run_worker(config)


def demo(args: argparse.Namespace, config: Config) -> int:
    """`demo`: the whole pipeline on a generated study."""
    from node.operate.demo import run_demo

    return run_demo(config, args.dir)


def train(args: argparse.Namespace, config: Config) -> int:
    """`train`: DenseNet-169 checkpoints with the MURA recipe; prints the model cards made."""
    from node.inference.engine import resolve_device
    from node.training.recipe import TrainSettings, train

    for option, value, least in (
        ("--epochs", args.epochs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--image-size", args.image_size, 32),
        ("--workers", args.workers, 0),
        ("--ensemble", args.ensemble, 1),
    ):
        if value < least:
            raise UsageError(f"{option} must be at least {least}, not {value}")
    if not args.learning_rate > 0:
        raise UsageError(f"--learning-rate must be greater than 0, not {args.learning_rate}")
    try:
        resolve_device(args.device)
    except RuntimeError as exc:
        raise UsageError(f"--device {args.device}: {exc}") from None
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: no such folder (the MURA-v1.1 folder)")
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


def evaluate(args: argparse.Namespace, config: Config) -> int:
    """`evaluate`: study-level metrics of model cards on a split; prints a Markdown table."""
    from node.training.evaluate import evaluate_split
    from node.training.scores import markdown_table

    report = evaluate_split(
        args.cards, args.split, args.out, args.root, threshold_split=args.choose_thresholds_on
    )
    print(markdown_table(report), end="")
    return 0


def synth(args: argparse.Namespace, config: Config) -> int:
    """`synth OUT`: a small synthetic MURA-layout data set; prints the commands that use it."""
    from node.training.synthetic import make_dataset

    if args.out.exists() and (args.out / "MURA-v1.1").exists():
        raise UsageError(f"{args.out / 'MURA-v1.1'} exists already; give an empty or new folder")
    try:
        base = make_dataset(
            args.out,
            studies_per_type=args.studies,
            images_per_study=args.images,
            size=args.size,
            seed=args.seed,
            label_noise=args.label_noise,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    studies = sum(1 for _ in (base / "train_labeled_studies.csv").open())
    valid = sum(1 for _ in (base / "valid_labeled_studies.csv").open())
    print(f"wrote {base}: {studies} training and {valid} validation studies")
    print(f"train:    mura-node train --data {base} --out runs/synth --image-size {args.size}")
    print(
        f"evaluate: mura-node evaluate --split {base / 'valid_image_paths.csv'} "
        "--cards runs/synth/models/*.toml --out runs/synth/valid"
    )
    return 0


def retry(args: argparse.Namespace, config: Config) -> int:
    """`retry`: re-queue the dead-lettered deliveries."""
    from node.db import make_engine
    from node.deliver.outbox import Outbox

    count = Outbox(make_engine(config.database_url)).retry_dead()
    print(f"re-queued {count} dead-lettered deliver{'y' if count == 1 else 'ies'}")
    return 0


def status(args: argparse.Namespace, config: Config) -> int:
    """`status`: the queue, once or every ``--watch`` seconds; exit 2 for a bad interval."""
    from node.clock import utcnow
    from node.db import check_schema, safe_url
    from node.operate.status import collect_status, untrained_model
    from node.operate.status_view import print_status

    if args.watch is not None and args.watch <= 0:
        return fail("--watch: the interval must be greater than 0 seconds", 2)
    engine = open_readonly(config)
    try:
        check_schema(engine)
        print_status(
            lambda: collect_status(
                engine,
                utcnow(),
                limit=max(1, args.limit),
                only_state=args.state,
                only_study=args.study,
                model_untrained=untrained_model(config.model),
            ),
            safe_url(config.database_url),
            json_output=args.json,
            watch=args.watch,
        )
        return 0
    finally:
        engine.dispose()


def studies_show(args: argparse.Namespace, config: Config) -> int:
    """`studies show UID`: one study in detail; exit 1 when no study or several match."""
    from node.db import check_schema
    from node.operate.reports import AmbiguousStudy
    from node.operate.status import study_history
    from node.operate.status_view import print_history

    engine = open_readonly(config)
    try:
        check_schema(engine)
        history = study_history(engine, args.uid)
    finally:
        engine.dispose()
    if history is None:
        return fail(f"no study matches {args.uid!r}", 1)
    if isinstance(history, AmbiguousStudy):
        return fail(f"{args.uid!r} matches {len(history.matches)} studies; give more of the UID", 1)
    print_history(history, json_output=args.json)
    return 0


def db_upgrade(args: argparse.Namespace, config: Config) -> int:
    """`db upgrade`: create or migrate the schema and say which of the two it did (or that
    there was nothing to do); exit 1 when the database refuses."""
    from sqlalchemy.exc import SQLAlchemyError

    from node.db import database_error_reason, make_engine, upgrade_database

    engine = make_engine(config.database_url)
    try:
        upgrade = upgrade_database(engine)
    except SQLAlchemyError as exc:
        return fail(f"cannot upgrade the database: {database_error_reason(exc)}", 1)
    finally:
        engine.dispose()
    print(upgrade.describe())
    return 0


def model_pack(args: argparse.Namespace, config: Config) -> int:
    """`model pack`: a state dict as safetensors weights and a model card."""
    from node.inference.cards import pack_checkpoint, read_state_dict

    if not 32 <= args.input_size <= 2048:
        raise UsageError(f"--input-size must be from 32 to 2048 pixels, not {args.input_size}")
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


def model_info(args: argparse.Namespace, config: Config) -> int:
    """`model info`: load the configured model; print its cards, hashes and device (CPU
    threads: those of each of serve's ``worker.processes``)."""
    from node.inference.engine import InferenceEngine
    from node.work.worker import worker_model_config

    engine = InferenceEngine.from_config(worker_model_config(config.model, config.worker.processes))
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


def config_show(args: argparse.Namespace, config: Config) -> int:
    """`config show`: the effective configuration as JSON (the database password hidden)."""
    print(json.dumps(config_dict(config), indent=2))
    return 0


# The command's words (`studies show` is "studies show") -> its function.
COMMANDS: Mapping[str, Command] = MappingProxyType(
    {
        "serve": serve,
        "worker": worker,
        "demo": demo,
        "train": train,
        "evaluate": evaluate,
        "synth": synth,
        "retry": retry,
        "status": status,
        "studies show": studies_show,
        "db upgrade": db_upgrade,
        "model info": model_info,
        "model pack": model_pack,
        "config show": config_show,
    }
)


def open_readonly(config: Config) -> Engine:
    """A read-only engine on the configured database; a missing SQLite file is a SchemaError,
    not something to create."""
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


def config_dict(config: Config) -> dict[str, Any]:
    """The configuration as JSON-ready data: paths as text, tuples as lists, mappings as
    objects, the database URL without its password plus the effective URL."""
    from node.db import safe_url

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                item.name: plain(getattr(value, item.name)) for item in dataclasses.fields(value)
            }
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    data: dict[str, Any] = plain(config)
    if data["database"]["url"]:
        data["database"]["url"] = safe_url(data["database"]["url"])
    data["database"]["effective_url"] = safe_url(config.database_url)
    return data
