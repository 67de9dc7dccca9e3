"""The configuration's sections: frozen dataclasses that check their own values when built.

Every way of building a section (``load_config``, ``dataclasses.replace``, a test or the demo
building one in code) runs the same checks in ``__post_init__`` and raises
:class:`~node.errors.ConfigError` with a message that names the key (``dicom.port: ...``).
Mappings are stored as read-only views (:class:`types.MappingProxyType`) and sequences as
tuples, so a built configuration cannot change; sections still pickle (the service hands them to
its child processes) and compare equal to plain dicts and tuples.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from node.config_checks import (
    FrozenValues,
    check_ae_title,
    check_port,
    check_positive,
    empty_mapping,
)
from node.errors import ConfigError
from node.states import ResultKind

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# The kinds of result object a destination can receive: the study's SR, the heatmap SC of each
# image, the study's summary image (an SC), a presentation state of each image (GSPS).
RESULT_KINDS: tuple[str, ...] = tuple(kind.value for kind in ResultKind)
# How a destination's messages start; load_config puts "destinations[<index>]" in its place.
DESTINATION = "destination"


@dataclass(frozen=True)
class DicomConfig(FrozenValues):
    """The receiving application entity (C-STORE SCP, PS3.7 and PS3.8; TLS per PS3.15 B.1)."""

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
    # calling AE title -> the IP addresses or networks it may connect from
    peer_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=empty_mapping)
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_client_ca: str = ""
    tls_client_certificates: str = "none"
    tls_handshake_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self._freeze_fields()
        check_ae_title("dicom.ae_title", self.ae_title)
        for index, title in enumerate(self.accepted_calling_ae_titles):
            check_ae_title(f"dicom.accepted_calling_ae_titles[{index}]", title)
        check_port("dicom.port", self.port)
        if not self.host:
            raise ConfigError("dicom.host: must not be empty (use 0.0.0.0 for all interfaces)")
        if self.max_associations < 1:
            raise ConfigError(
                f"dicom.max_associations: must be at least 1, got {self.max_associations}"
            )
        if self.maximum_pdu_size != 0 and self.maximum_pdu_size < 4096:
            raise ConfigError(
                f"dicom.maximum_pdu_size: must be 0 (unlimited) or at least 4096, "
                f"got {self.maximum_pdu_size}"
            )
        check_positive("dicom", self, ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"))
        if not 0.0001 <= self.poll_interval_s <= 0.1:
            raise ConfigError(
                f"dicom.poll_interval_s: must be between 0.0001 and 0.1, got {self.poll_interval_s}"
            )
        if self.max_dataset_bytes < 0:
            raise ConfigError(
                f"dicom.max_dataset_bytes: must be 0 (no limit) or more, got {self.max_dataset_bytes}"
            )
        self._check_peers()
        self._check_tls()

    def _check_peers(self) -> None:
        for title, addresses in self.peer_addresses.items():
            key = f"dicom.peer_addresses.{title}"
            check_ae_title(key, title)
            if self.accepted_calling_ae_titles and title not in self.accepted_calling_ae_titles:
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

    def _check_tls(self) -> None:
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ConfigError("dicom.tls_certificate and dicom.tls_private_key go together")
        if self.tls_client_certificates not in ("none", "optional", "required"):
            raise ConfigError(
                "dicom.tls_client_certificates: must be none, optional or required, "
                f"got {self.tls_client_certificates!r}"
            )
        if self.tls_client_certificates != "none" and not self.tls_client_ca:
            raise ConfigError(
                "dicom.tls_client_ca: needed to verify client certificates "
                f"(dicom.tls_client_certificates = {self.tls_client_certificates!r})"
            )
        if (self.tls_client_ca or self.tls_client_certificates != "none") and not (
            self.tls_certificate
        ):
            raise ConfigError("dicom.tls_client_ca: TLS is off (set dicom.tls_certificate first)")
        check_positive("dicom", self, ("tls_handshake_timeout_s",))


@dataclass(frozen=True)
class StorageConfig(FrozenValues):
    """Where received instances and results are kept, and for how long."""

    data_dir: Path = Path("mura-node-data")
    min_free_bytes: int = 536_870_912
    purge_delivered: bool = True
    retention_days: float = 7.0

    def __post_init__(self) -> None:
        if self.min_free_bytes < 0:
            raise ConfigError(
                f"storage.min_free_bytes: must be 0 or more, got {self.min_free_bytes}"
            )
        if self.retention_days < 0:
            raise ConfigError(
                f"storage.retention_days: must be 0 or more, got {self.retention_days}"
            )


@dataclass(frozen=True)
class DatabaseConfig(FrozenValues):
    """The queue's database: an SQLAlchemy URL."""

    url: str = ""  # empty: SQLite file mura-node.db in the data directory

    def __post_init__(self) -> None:
        if self.url and "://" not in self.url:
            raise ConfigError(
                f"database.url: not a database URL: {self.url!r} (e.g. postgresql://host/db)"
            )


@dataclass(frozen=True)
class CompletionConfig(FrozenValues):
    """When a study counts as fully arrived (see node/complete/completion.py); seconds. The
    release trigger: docs/ingest.md, "Release-triggered completion"."""

    quiet_period_s: float = 60.0
    force_complete_s: float = 900.0
    tick_interval_s: float = 5.0
    release_trigger_aes: tuple[str, ...] = ()  # calling AE titles, compared without padding
    release_settle_s: float = 5.0

    def __post_init__(self) -> None:
        self._freeze("release_trigger_aes", tuple(t.strip() for t in self.release_trigger_aes))
        timers = ("quiet_period_s", "force_complete_s", "tick_interval_s", "release_settle_s")
        check_positive("completion", self, timers)
        if self.force_complete_s < self.quiet_period_s:
            raise ConfigError(
                f"completion.force_complete_s: must not be shorter than completion.quiet_period_s "
                f"({self.force_complete_s} < {self.quiet_period_s})"
            )
        for index, title in enumerate(self.release_trigger_aes):
            check_ae_title(f"completion.release_trigger_aes[{index}]", title)


@dataclass(frozen=True)
class ServiceConfig(FrozenValues):
    """The service: shutdown grace and logging (node/logs.py)."""

    grace_period_s: float = 30.0
    log_level: str = "INFO"
    log_format: str = "text"
    # logger name -> level, e.g. {"node.receive.scp": "DEBUG"}
    log_levels: Mapping[str, str] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        self._freeze_fields()
        if self.grace_period_s < 0:
            raise ConfigError(
                f"service.grace_period_s: must be 0 or more, got {self.grace_period_s}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"service.log_level: must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"service.log_format: must be text or json, got {self.log_format!r}")
        for name, level in self.log_levels.items():
            if level.upper() not in LOG_LEVELS:
                raise ConfigError(
                    f"service.log_levels.{name}: must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
                )


@dataclass(frozen=True)
class ModelConfig(FrozenValues):
    """The inference engine (see node/inference/engine.py)."""

    cards: tuple[str, ...] = ()
    allow_untrained: bool = False
    device: str = "auto"
    precision: str = "bf16"
    channels_last: bool = True
    cpu_threads: int = 0
    batch_size: int = 0
    threshold: float = 0.5
    # MURA study type -> decision threshold on the study probability, in (0, 1)
    thresholds: Mapping[str, float] = field(default_factory=empty_mapping)
    preprocess_workers: int = 0
    max_image_pixels: int = 100_000_000
    # JPEG and JPEG 2000 decoding: "auto" and "cuda" on an NVIDIA GPU through nvImageCodec (the
    # "gpu" extra) where it and a CUDA device are there, else on the CPU; "cpu": always the CPU
    decode_device: str = "auto"
    # JPEG baseline and JPEG 2000 decoded on the CPU no larger than the model input and the
    # heatmap's display image need; false: always in full
    reduced_decoding: bool = True

    def __post_init__(self) -> None:
        from node.profiles import MURA_STUDY_TYPES

        self._freeze_fields()
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"model.device: must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ConfigError(
                f"model.precision: must be bf16, fp16 or fp32, got {self.precision!r}"
            )
        if self.decode_device not in ("auto", "cpu", "cuda"):
            raise ConfigError(
                f"model.decode_device: must be auto, cpu or cuda, got {self.decode_device!r}"
            )
        if self.max_image_pixels < 1:
            raise ConfigError(
                f"model.max_image_pixels: must be at least 1, got {self.max_image_pixels}"
            )
        for key in ("cpu_threads", "preprocess_workers", "batch_size"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key}: must be 0 or more, got {getattr(self, key)}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"model.threshold: must be between 0 and 1, got {self.threshold}")
        for study_type, value in self.thresholds.items():
            if study_type not in MURA_STUDY_TYPES:
                raise ConfigError(
                    f"model.thresholds.{study_type}: unknown study type "
                    f"(one of {', '.join(MURA_STUDY_TYPES)})"
                )
            if not 0 < value < 1:
                raise ConfigError(
                    f"model.thresholds.{study_type}: must be between 0 and 1, got {value}"
                )


@dataclass(frozen=True)
class WorkerConfig(FrozenValues):
    """The inference worker (node/work/worker.py)."""

    processes: int = 1
    poll_interval_s: float = 1.0
    lease_s: float = 60.0
    max_crashes: int = 3

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ConfigError(f"worker.processes: must be 0 or more, got {self.processes}")
        check_positive("worker", self, ("poll_interval_s", "lease_s"))
        if self.max_crashes < 1:
            raise ConfigError(f"worker.max_crashes: must be at least 1, got {self.max_crashes}")


@dataclass(frozen=True)
class DispatchConfig(FrozenValues):
    """Delivery of results to the destinations (node/deliver/dispatch.py)."""

    poll_interval_s: float = 2.0
    max_attempts: int = 8
    first_retry_s: float = 10.0
    max_retry_s: float = 900.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        check_positive(
            "dispatch", self, ("poll_interval_s", "first_retry_s", "max_retry_s", "timeout_s")
        )
        if self.max_attempts < 1:
            raise ConfigError(f"dispatch.max_attempts: must be at least 1, got {self.max_attempts}")


@dataclass(frozen=True)
class MetricsConfig(FrozenValues):
    """Prometheus metrics and health endpoint (node/metrics.py)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464

    def __post_init__(self) -> None:
        check_port("metrics.port", self.port)


@dataclass(frozen=True)
class Destination(FrozenValues):
    """A DICOM peer that receives the node's results (used by the dispatcher).

    Its messages start with ``destination``; ``load_config`` names the array entry instead
    (``destinations[0].port: ...``).
    """

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

    def __post_init__(self) -> None:
        self._freeze_fields()
        where = DESTINATION
        if not self.name:
            raise ConfigError(f"{where}.name: must not be empty")
        check_ae_title(f"{where}.ae_title", self.ae_title)
        check_port(f"{where}.port", self.port)
        if not self.host:
            raise ConfigError(f"{where}.host: must not be empty")
        if bool(self.tls_certificate) != bool(self.tls_private_key):
            raise ConfigError(
                f"{where}: tls_certificate and tls_private_key go together (a client certificate)"
            )
        if (self.tls_ca or self.tls_certificate) and not self.tls:
            raise ConfigError(f"{where}: TLS files are set but tls = false")
        unknown = [kind for kind in self.objects if kind not in RESULT_KINDS]
        if unknown or not self.objects:
            kinds = ", ".join(f'"{kind}"' for kind in RESULT_KINDS)
            raise ConfigError(
                f"{where}.objects: a non-empty list of {kinds}, got {list(self.objects)}"
            )
