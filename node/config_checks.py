"""What the configuration's sections share: freezing into read-only values that still pickle,
and the checks of values that several sections hold (positive numbers, AE titles, ports). Each
check raises :class:`~node.errors.ConfigError` with a message that names the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from node.errors import ConfigError


def empty_mapping() -> Mapping[Any, Any]:
    return MappingProxyType({})


class FrozenValues:
    """Freezing and pickling shared by the sections: mappings become read-only views, lists
    tuples; a pickled section is rebuilt (and checked again) from plain values."""

    def _freeze(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _freeze_fields(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if isinstance(value, Mapping):
                frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(value).items()}
                self._freeze(item.name, MappingProxyType(frozen))
            elif isinstance(value, list):
                self._freeze(item.name, tuple(value))

    def __reduce__(self) -> tuple[Any, ...]:
        values = {
            item.name: dict(value)
            if isinstance(value := getattr(self, item.name), Mapping)
            else value
            for item in dataclasses.fields(self)  # type: ignore[arg-type]
        }
        return (_rebuild, (type(self), values))


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)


def check_positive(section: str, values: object, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(values, key)
        if value <= 0:
            raise ConfigError(f"{section}.{key}: must be greater than 0, got {value}")


def check_ae_title(key: str, title: str) -> None:
    """An AE title (PS3.5 6.2, VR AE): 1 to 16 printable ASCII characters, no backslash."""
    if not title.strip():
        raise ConfigError(f"{key}: must not be empty")
    if len(title) > 16:
        raise ConfigError(f"{key}: at most 16 characters, got {len(title)} ({title!r})")
    if "\\" in title or any(ord(ch) < 32 or ord(ch) > 126 for ch in title):
        raise ConfigError(f"{key}: only printable ASCII without backslash is allowed ({title!r})")


def check_port(key: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: must be between 1 and 65535, got {port}")
