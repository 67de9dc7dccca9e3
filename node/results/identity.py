"""Who wrote a result: the node as a device observer, and the algorithm that decided."""

from __future__ import annotations

from dataclasses import dataclass

from node import __version__

MANUFACTURER = "mura-node project"
MODEL_NAME = "mura-node"


@dataclass(frozen=True)
class NodeIdentity:
    device_uid: str
    ae_title: str
    manufacturer: str = MANUFACTURER
    model_name: str = MODEL_NAME
    software_version: str = __version__


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    version: str
    checkpoints: tuple[str, ...]  # "name version sha256" per ensemble member
    untrained: bool

    @property
    def display_name(self) -> str:
        return f"{self.name} (UNTRAINED)" if self.untrained else self.name
