"""Configuration: frozen dataclasses built once at start from TOML, then environment overrides.

Sources, later ones win:

1. built-in defaults (the dataclass defaults below, documented in ``config.example.toml``);
2. a TOML file: ``--config PATH``, else ``./mura-node.toml`` when it exists;
3. environment variables ``MURA_NODE_<SECTION>__<KEY>`` (for example ``MURA_NODE_DICOM__PORT=11113``).
   Scalars are parsed by the key's type; a list is either a TOML array (``'["PACS", "CT1"]'``) or
   comma-separated text (``PACS,CT1``). ``MURA_NODE_DESTINATIONS`` takes a TOML array of inline tables.

Every problem (unknown key, wrong type, value out of range, unreadable file) raises
:class:`~node.errors.ConfigError` with a message that names the key; the CLI prints it and exits 2.
The values are checked when the dataclasses are built (node/config_sections.py), so a ``Config``
built in code is checked the same way as one loaded here; a built ``Config`` cannot change.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from node.config_sections import (
    DESTINATION,
    LOG_LEVELS,
    RESULT_KINDS,
    CompletionConfig,
    DatabaseConfig,
    Destination,
    DicomConfig,
    DispatchConfig,
    FrozenValues,
    MetricsConfig,
    ModelConfig,
    ServiceConfig,
    StorageConfig,
    WorkerConfig,
)
from node.errors import ConfigError

__all__ = [
    "LOG_LEVELS",
    "RESULT_KINDS",
    "CompletionConfig",
    "Config",
    "DatabaseConfig",
    "Destination",
    "DicomConfig",
    "DispatchConfig",
    "MetricsConfig",
    "ModelConfig",
    "ServiceConfig",
    "StorageConfig",
    "WorkerConfig",
    "load_config",
]

ENV_PREFIX = "MURA_NODE_"
DEFAULT_CONFIG_FILE = Path("mura-node.toml")


@dataclass(frozen=True)
class Config(FrozenValues):
    """The node's whole configuration: one frozen section per TOML table, and the destinations.

    Raises :class:`~node.errors.ConfigError` when built with destinations that share a name
    (each section and destination checks its own values).
    """

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

    def __post_init__(self) -> None:
        self._freeze_fields()
        names: set[str] = set()
        for index, dest in enumerate(self.destinations):
            if dest.name in names:
                raise ConfigError(
                    f"destinations[{index}].name: duplicate destination name {dest.name!r}"
                )
            names.add(dest.name)

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
    if get_origin(hint) is Mapping:
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
    return Config(**sections, destinations=destinations, source=source)


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
        try:
            result.append(Destination(**values))
        except ConfigError as exc:  # name the array entry, not "destination"
            raise ConfigError(where + str(exc).removeprefix(DESTINATION)) from None
    return tuple(result)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
        origin = get_origin(hint)
    if origin is Mapping:
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


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _describe(value: Any) -> str:
    return f"{_type_name(value)} {value!r}"
