"""Configuration: frozen dataclasses built once at start from TOML, then environment overrides.

Sources, later ones win:

1. built-in defaults (the dataclass defaults below, documented in ``config.example.toml``);
2. a TOML file: ``--config PATH``, else ``./mura-node.toml`` when it exists;
3. environment variables ``MURA_NODE_<SECTION>__<KEY>`` (for example ``MURA_NODE_DICOM__PORT=11113``).
   Scalars are parsed by the key's type; a list is either a TOML array (``'["PACS", "CT1"]'``) or
   comma-separated text (``PACS,CT1``). ``MURA_NODE_DESTINATIONS`` takes a TOML array of inline tables.

Every problem (unknown key, wrong type, value out of range, unreadable file) raises
:class:`~node.errors.ConfigError` with a message that names the key; the CLI prints it and exits 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from node.db import ResultKind
from node.errors import ConfigError

ENV_PREFIX = "MURA_NODE_"
DEFAULT_CONFIG_FILE = Path("mura-node.toml")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class DicomConfig:
    """The receiving application entity."""

    ae_title: str = "MURA_NODE"
    host: str = "0.0.0.0"
    port: int = 11112
    accepted_calling_ae_titles: tuple[str, ...] = ()
    require_called_ae_title: bool = True
    max_associations: int = 16
    maximum_pdu_size: int = 262144
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    poll_interval_s: float = 0.001
    max_dataset_bytes: int = 1_073_741_824
    peer_addresses: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_client_ca: str = ""
    tls_client_certificates: str = "none"
    tls_handshake_timeout_s: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("mura-node-data")
    min_free_bytes: int = 536_870_912
    purge_delivered: bool = True
    retention_days: float = 7.0


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # empty: SQLite file mura-node.db in the data directory


@dataclass(frozen=True)
class CompletionConfig:
    """When a study counts as fully arrived (see node/completion.py)."""

    quiet_period_s: float = 60.0
    force_complete_s: float = 900.0
    tick_interval_s: float = 5.0


@dataclass(frozen=True)
class ServiceConfig:
    grace_period_s: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    log_levels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    """The inference engine (see node/engine.py)."""

    cards: tuple[str, ...] = ()
    allow_untrained: bool = False
    device: str = "auto"
    precision: str = "bf16"
    channels_last: bool = True
    cpu_threads: int = 0
    batch_size: int = 0
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)
    preprocess_workers: int = 0
    max_image_pixels: int = 100_000_000


@dataclass(frozen=True)
class WorkerConfig:
    """The inference worker (node/worker.py)."""

    processes: int = 1
    poll_interval_s: float = 1.0
    lease_s: float = 60.0
    max_crashes: int = 3


@dataclass(frozen=True)
class DispatchConfig:
    """Delivery of results to the destinations (node/dispatch.py)."""

    poll_interval_s: float = 2.0
    max_attempts: int = 8
    first_retry_s: float = 10.0
    max_retry_s: float = 900.0
    timeout_s: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics and health endpoint (node/metrics.py)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464


# The kinds of result object a destination can receive: the study's SR, the heatmap SC of each
# image, the study's summary image (an SC), a presentation state of each image (GSPS).
RESULT_KINDS: tuple[str, ...] = tuple(ResultKind)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer that receives the node's results (used by the dispatcher)."""

    name: str
    ae_title: str
    host: str
    port: int
    # Which results it receives (RESULT_KINDS); presentation states ("gsps") only when asked for.
    objects: tuple[str, ...] = (ResultKind.SR, ResultKind.SC, ResultKind.SUMMARY)
    tls: bool = False
    tls_ca: str = ""
    tls_certificate: str = ""
    tls_private_key: str = ""


@dataclass(frozen=True)
class Config:
    dicom: DicomConfig = field(default_factory=DicomConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    destinations: tuple[Destination, ...] = ()
    source: str = "built-in defaults"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.storage.data_dir / 'mura-node.db').resolve()}"


_SECTIONS: dict[str, type] = {
    "dicom": DicomConfig,
    "storage": StorageConfig,
    "database": DatabaseConfig,
    "completion": CompletionConfig,
    "service": ServiceConfig,
    "model": ModelConfig,
    "worker": WorkerConfig,
    "dispatch": DispatchConfig,
    "metrics": MetricsConfig,
}


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, the TOML file and the environment."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "built-in defaults"
    if path is None and "MURA_NODE_CONFIG" in environ:
        path = Path(environ["MURA_NODE_CONFIG"])
    if path is None and DEFAULT_CONFIG_FILE.is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        raw = _read_toml(path)
        source = str(path)
    _apply_environment(raw, environ)
    return _build(raw, source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == "MURA_NODE_CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest == "destinations":
            try:
                raw["destinations"] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(
                    f"{name}: expected a TOML array of tables, e.g. "
                    '[{name="pacs", ae_title="PACS", host="10.0.0.5", port=104}]'
                ) from None
            continue
        section, sep, key = rest.partition("__")
        if not sep or section not in _SECTIONS:
            raise ConfigError(
                f"{name}: unknown environment variable; expected {ENV_PREFIX}<SECTION>__<KEY> "
                f"with SECTION one of {', '.join(s.upper() for s in _SECTIONS)}"
            )
        hints = get_type_hints(_SECTIONS[section])
        if key not in hints:
            raise ConfigError(f"{name}: unknown key '{section}.{key}'")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a table")
        raw[section][key] = _parse_env_value(name, value, hints[key])


def _parse_env_value(name: str, text: str, hint: Any) -> Any:
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {text!r}") from None
    if get_origin(hint) is dict:
        try:
            return tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(
                f"{name}: expected a TOML inline table, e.g. {{wrist = 0.45}}"
            ) from None
    if get_origin(hint) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{name}: not a valid TOML array: {text!r}") from None
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return text


def _build(raw: dict[str, Any], source: str) -> Config:
    known = {*_SECTIONS, "destinations"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' (known sections: {', '.join(sorted(known))})")
    sections = {
        name: _build_section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()
    }
    destinations = _build_destinations(raw.get("destinations", []))
    config = Config(**sections, destinations=destinations, source=source)
    _validate(config)
    return config


def _build_section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table, got {_type_name(table)}")
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"unknown key '{name}.{key}' (known keys: {known})")
        values[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**values)


def _build_destinations(items: Any) -> tuple[Destination, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"destinations: expected an array of tables, got {_type_name(items)}")
    hints = get_type_hints(Destination)
    result = []
    for index, item in enumerate(items):
        where = f"destinations[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table, got {_type_name(item)}")
        for key in item:
            if key not in hints:
                raise ConfigError(f"unknown key '{where}.{key}' (known keys: {', '.join(hints)})")
        defaults = {
            f.name for f in dataclasses.fields(Destination) if f.default is not dataclasses.MISSING
        }
        missing = [key for key in hints if key not in item and key not in defaults]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
        values = {
            key: _coerce(f"{where}.{key}", item[key], hints[key]) for key in hints if key in item
        }
        result.append(Destination(**values))
    return tuple(result)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
        origin = get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_describe(value)}")
        return {str(k): _coerce(f"{key}.{k}", v, get_args(hint)[1]) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {_describe(value)}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{key}: expected a path (a non-empty string), got {_describe(value)}"
            )
        return Path(value).expanduser()
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error


def _validate(config: Config) -> None:
    dicom = config.dicom
    _check_ae_title("dicom.ae_title", dicom.ae_title)
    for index, title in enumerate(dicom.accepted_calling_ae_titles):
        _check_ae_title(f"dicom.accepted_calling_ae_titles[{index}]", title)
    _check_port("dicom.port", dicom.port)
    if not dicom.host:
        raise ConfigError("dicom.host: must not be empty (use 0.0.0.0 for all interfaces)")
    if dicom.max_associations < 1:
        raise ConfigError(
            f"dicom.max_associations: must be at least 1, got {dicom.max_associations}"
        )
    if dicom.maximum_pdu_size != 0 and dicom.maximum_pdu_size < 4096:
        raise ConfigError(
            f"dicom.maximum_pdu_size: must be 0 (unlimited) or at least 4096, "
            f"got {dicom.maximum_pdu_size}"
        )
    for key in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
        if getattr(dicom, key) <= 0:
            raise ConfigError(f"dicom.{key}: must be greater than 0, got {getattr(dicom, key)}")
    if not 0.0001 <= dicom.poll_interval_s <= 0.1:
        raise ConfigError(
            f"dicom.poll_interval_s: must be between 0.0001 and 0.1, got {dicom.poll_interval_s}"
        )
    _validate_access(dicom)
    _validate_storage(config.storage)
    completion = config.completion
    for key in ("quiet_period_s", "force_complete_s", "tick_interval_s"):
        if getattr(completion, key) <= 0:
            raise ConfigError(
                f"completion.{key}: must be greater than 0, got {getattr(completion, key)}"
            )
    if completion.force_complete_s < completion.quiet_period_s:
        raise ConfigError(
            f"completion.force_complete_s: must not be shorter than completion.quiet_period_s "
            f"({completion.force_complete_s} < {completion.quiet_period_s})"
        )
    if config.service.grace_period_s < 0:
        raise ConfigError(
            f"service.grace_period_s: must be 0 or more, got {config.service.grace_period_s}"
        )
    if config.service.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(
            f"service.log_level: must be one of {', '.join(LOG_LEVELS)}, got {config.service.log_level!r}"
        )
    _validate_model(config.model)
    if config.service.log_format not in ("text", "json"):
        raise ConfigError(
            f"service.log_format: must be text or json, got {config.service.log_format!r}"
        )
    for name, level in config.service.log_levels.items():
        if level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"service.log_levels.{name}: must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
            )
    url = config.database.url
    if url and "://" not in url:
        raise ConfigError(f"database.url: not a database URL: {url!r} (e.g. postgresql://host/db)")
    names: set[str] = set()
    for index, dest in enumerate(config.destinations):
        where = f"destinations[{index}]"
        if not dest.name:
            raise ConfigError(f"{where}.name: must not be empty")
        if dest.name in names:
            raise ConfigError(f"{where}.name: duplicate destination name {dest.name!r}")
        names.add(dest.name)
        _check_ae_title(f"{where}.ae_title", dest.ae_title)
        _check_port(f"{where}.port", dest.port)
        if not dest.host:
            raise ConfigError(f"{where}.host: must not be empty")
        if bool(dest.tls_certificate) != bool(dest.tls_private_key):
            raise ConfigError(
                f"{where}: tls_certificate and tls_private_key go together (a client certificate)"
            )
        if (dest.tls_ca or dest.tls_certificate) and not dest.tls:
            raise ConfigError(f"{where}: TLS files are set but tls = false")
        unknown = [kind for kind in dest.objects if kind not in RESULT_KINDS]
        if unknown or not dest.objects:
            kinds = ", ".join(f'"{kind}"' for kind in RESULT_KINDS)
            raise ConfigError(
                f"{where}.objects: a non-empty list of {kinds}, got {list(dest.objects)}"
            )
    if config.worker.processes < 0:
        raise ConfigError(f"worker.processes: must be 0 or more, got {config.worker.processes}")
    for section, keys in (
        ("worker", ("poll_interval_s", "lease_s")),
        ("dispatch", ("poll_interval_s", "first_retry_s", "max_retry_s", "timeout_s")),
    ):
        for key in keys:
            value = getattr(getattr(config, section), key)
            if value <= 0:
                raise ConfigError(f"{section}.{key}: must be greater than 0, got {value}")
    if config.worker.max_crashes < 1:
        raise ConfigError(
            f"worker.max_crashes: must be at least 1, got {config.worker.max_crashes}"
        )
    _check_port("metrics.port", config.metrics.port)
    if config.dispatch.max_attempts < 1:
        raise ConfigError(
            f"dispatch.max_attempts: must be at least 1, got {config.dispatch.max_attempts}"
        )


def _validate_access(dicom: DicomConfig) -> None:
    if dicom.max_dataset_bytes < 0:
        raise ConfigError(
            f"dicom.max_dataset_bytes: must be 0 (no limit) or more, got {dicom.max_dataset_bytes}"
        )
    for title, addresses in dicom.peer_addresses.items():
        key = f"dicom.peer_addresses.{title}"
        _check_ae_title(key, title)
        if dicom.accepted_calling_ae_titles and title not in dicom.accepted_calling_ae_titles:
            raise ConfigError(f"{key}: {title!r} is not in dicom.accepted_calling_ae_titles")
        if not addresses:
            raise ConfigError(f"{key}: give at least one address or network")
        for address in addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{key}: {address!r} is not an IP address or network (e.g. 10.0.0.0/24)"
                ) from None
    if bool(dicom.tls_certificate) != bool(dicom.tls_private_key):
        raise ConfigError("dicom.tls_certificate and dicom.tls_private_key go together")
    if dicom.tls_client_certificates not in ("none", "optional", "required"):
        raise ConfigError(
            "dicom.tls_client_certificates: must be none, optional or required, "
            f"got {dicom.tls_client_certificates!r}"
        )
    if dicom.tls_client_certificates != "none" and not dicom.tls_client_ca:
        raise ConfigError(
            "dicom.tls_client_ca: needed to verify client certificates "
            f"(dicom.tls_client_certificates = {dicom.tls_client_certificates!r})"
        )
    if (dicom.tls_client_ca or dicom.tls_client_certificates != "none") and not (
        dicom.tls_certificate
    ):
        raise ConfigError("dicom.tls_client_ca: TLS is off (set dicom.tls_certificate first)")
    if dicom.tls_handshake_timeout_s <= 0:
        raise ConfigError(
            f"dicom.tls_handshake_timeout_s: must be greater than 0, got {dicom.tls_handshake_timeout_s}"
        )


def _validate_storage(storage: StorageConfig) -> None:
    if storage.min_free_bytes < 0:
        raise ConfigError(
            f"storage.min_free_bytes: must be 0 or more, got {storage.min_free_bytes}"
        )
    if storage.retention_days < 0:
        raise ConfigError(
            f"storage.retention_days: must be 0 or more, got {storage.retention_days}"
        )


def _validate_model(model: ModelConfig) -> None:
    from node.profiles import MURA_STUDY_TYPES

    if model.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", model.device):
        raise ConfigError(f"model.device: must be auto, cpu, cuda or cuda:N, got {model.device!r}")
    if model.precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"model.precision: must be bf16, fp16 or fp32, got {model.precision!r}")
    if model.max_image_pixels < 1:
        raise ConfigError(
            f"model.max_image_pixels: must be at least 1, got {model.max_image_pixels}"
        )
    for key in ("cpu_threads", "preprocess_workers", "batch_size"):
        if getattr(model, key) < 0:
            raise ConfigError(f"model.{key}: must be 0 or more, got {getattr(model, key)}")
    if not 0 < model.threshold < 1:
        raise ConfigError(f"model.threshold: must be between 0 and 1, got {model.threshold}")
    for study_type, value in model.thresholds.items():
        if study_type not in MURA_STUDY_TYPES:
            raise ConfigError(
                f"model.thresholds.{study_type}: unknown study type "
                f"(one of {', '.join(MURA_STUDY_TYPES)})"
            )
        if not 0 < value < 1:
            raise ConfigError(
                f"model.thresholds.{study_type}: must be between 0 and 1, got {value}"
            )


def _check_ae_title(key: str, title: str) -> None:
    if not title.strip():
        raise ConfigError(f"{key}: must not be empty")
    if len(title) > 16:
        raise ConfigError(f"{key}: at most 16 characters, got {len(title)} ({title!r})")
    if "\\" in title or any(ord(ch) < 32 or ord(ch) > 126 for ch in title):
        raise ConfigError(f"{key}: only printable ASCII without backslash is allowed ({title!r})")


def _check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: must be between 1 and 65535, got {port}")


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _describe(value: Any) -> str:
    return f"{_type_name(value)} {value!r}"
