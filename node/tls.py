"""DICOM TLS (PS3.15 Annex B, BCP 195 profiles): SSL contexts for the SCP and for destinations.

Both sides speak TLS 1.2 or 1.3 only. With TLS 1.2 the cipher suites are restricted to the ones
BCP 195 (RFC 9325) recommends: ephemeral (EC)DHE key exchange with AES-GCM or ChaCha20-Poly1305;
TLS 1.3 suites are all AEAD and kept as OpenSSL orders them. Compression and renegotiation are
off (OpenSSL's defaults in Python's ``ssl``).

Client certificates on the SCP: ``none`` (any client may connect; the AE title allow-list still
applies), ``optional`` (a presented certificate must verify against ``tls_client_ca``) or
``required`` (no verified certificate, no association).
"""

from __future__ import annotations

import ssl

from node.config import Destination, DicomConfig
from node.errors import ConfigError

BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!SHA1"

_CLIENT_CERTIFICATES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load(action: str, load: object, *args: str) -> None:
    try:
        load(*args)  # type: ignore[operator]
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot load {action} {args[0]}: {reason}") from None


def server_context(config: DicomConfig) -> ssl.SSLContext | None:
    """The SCP's context, or None when TLS is off (no dicom.tls_certificate)."""
    if not config.tls_certificate:
        return None
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load(
        "dicom.tls_certificate",
        context.load_cert_chain,
        config.tls_certificate,
        config.tls_private_key,
    )
    context.verify_mode = _CLIENT_CERTIFICATES[config.tls_client_certificates]
    if config.tls_client_ca:
        _load("dicom.tls_client_ca", context.load_verify_locations, config.tls_client_ca)
    return context


def server_description(config: DicomConfig) -> str:
    """How the SCP's port speaks, for the start-up line: "" (plain DICOM) or
    " (DICOM TLS only, client certificate required)" and the like."""
    if not config.tls_certificate:
        return ""
    certificates = {
        "none": "no client certificate asked",
        "optional": "client certificates verified when given",
        "required": "client certificate required",
    }[config.tls_client_certificates]
    return f" (DICOM TLS only, {certificates})"


def client_context(destination: Destination) -> ssl.SSLContext | None:
    """The context for sending to ``destination``, or None when it does not use TLS.

    The destination's certificate is verified against ``tls_ca`` (else the system's trust store)
    and its name against ``host``."""
    if not destination.tls:
        return None
    where = f"destinations.{destination.name}"
    context = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if destination.tls_ca:
        _load(f"{where}.tls_ca", context.load_verify_locations, destination.tls_ca)
    if destination.tls_certificate:
        _load(
            f"{where}.tls_certificate",
            context.load_cert_chain,
            destination.tls_certificate,
            destination.tls_private_key,
        )
    return context
