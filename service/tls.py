"""Transport security of the gRPC port: TLS from certificate and key files, optionally mutual
TLS (every client presents a certificate from the client CA), or plaintext only when
``REFUND_RETRY_PLAINTEXT=true`` says so.

Plaintext is never the silent default: a server started without certificate files and without
that setting refuses to start, so a forgotten secret mount cannot downgrade production to
cleartext bearer tokens. ``scripts/serve`` and the tests opt in explicitly.

Every file is read and checked here, before anything listens, because gRPC itself reports a
missing, malformed or mismatched certificate or key only as "failed to bind" (with details
on its own stderr). The checks use the standard library's OpenSSL: the certificate chain
parses, the key parses and is not encrypted (gRPC cannot decrypt keys), the key belongs to
the certificate, the client CA file holds certificates.

There are two client-certificate modes, ``none`` and ``require``. grpcio offers no
"optional" mode: its ``ssl_server_credentials`` either does not ask for a client certificate
at all or requires and verifies one, so a server cannot accept certificates from some
clients and tokens alone from others on one port.
"""

from __future__ import annotations

import logging
import re
import ssl
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import grpc

from service.auth import TokenTable
from service.config import PREFIX, Config
from service.errors import ConfigError

log = logging.getLogger(__name__)


class Security(StrEnum):
    PLAINTEXT = "plaintext"
    TLS = "tls"
    MUTUAL_TLS = "mutual_tls"


@dataclass(frozen=True)
class Transport:
    """How the gRPC port is served; ``describe`` is what the start log line says."""

    security: Security
    credentials: grpc.ServerCredentials | None = None
    certificate_file: str = ""
    client_ca_file: str = ""

    def describe(self) -> str:
        if self.security is Security.PLAINTEXT:
            return f"PLAINTEXT: no transport security ({PREFIX}PLAINTEXT=true)"
        if self.security is Security.TLS:
            return f"TLS (certificate {self.certificate_file}; no client certificates)"
        return (
            f"mutual TLS (certificate {self.certificate_file}; client certificates "
            f"required, verified against {self.client_ca_file})"
        )

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """The bound port, 0 when gRPC could not bind (it raises for some causes)."""
        try:
            if self.credentials is None:
                return server.add_insecure_port(address)
            return server.add_secure_port(address, self.credentials)
        except RuntimeError:  # port taken, host wrong, or (rarely) BoringSSL refused the files
            return 0


def load(config: Config, tokens: TokenTable) -> Transport:
    """The transport the settings describe, every file read and checked; a ``ConfigError``
    naming the setting and the file otherwise."""
    tls_files = {
        "TLS_CERT_FILE": config.tls_cert_file,
        "TLS_KEY_FILE": config.tls_key_file,
        "TLS_CLIENT_CA_FILE": config.tls_client_ca_file,
    }
    require = config.tls_client_auth == "require"
    if config.plaintext:
        configured = [PREFIX + name for name, path in tls_files.items() if path]
        if require:
            configured.append(f"{PREFIX}TLS_CLIENT_AUTH=require")
        if configured:
            raise ConfigError(
                f"{PREFIX}PLAINTEXT=true contradicts {', '.join(configured)}: "
                "serve plaintext or TLS, not both"
            )
        _warn_unused_certificate_entries(tokens, "the server is plaintext")
        return Transport(Security.PLAINTEXT)
    if not config.tls_cert_file and not config.tls_key_file:
        raise ConfigError(
            f"gRPC needs TLS: set {PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE, or "
            f"{PREFIX}PLAINTEXT=true to serve without transport security (development, or "
            "behind a proxy that terminates TLS)"
        )
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE"):
        if not tls_files[name]:
            other = "TLS_KEY_FILE" if name == "TLS_CERT_FILE" else "TLS_CERT_FILE"
            raise ConfigError(f"{PREFIX}{other} is set but {PREFIX}{name} is not: set both")

    chain = _read("TLS_CERT_FILE", config.tls_cert_file)
    _check_certificates("TLS_CERT_FILE", config.tls_cert_file, chain)
    key = _read("TLS_KEY_FILE", config.tls_key_file)
    _check_key(config.tls_cert_file, config.tls_key_file, key)

    client_ca: bytes | None = None
    if require:
        if not config.tls_client_ca_file:
            raise ConfigError(
                f"{PREFIX}TLS_CLIENT_AUTH=require needs {PREFIX}TLS_CLIENT_CA_FILE: the CA "
                "certificates that client certificates must chain to"
            )
        client_ca = _read("TLS_CLIENT_CA_FILE", config.tls_client_ca_file)
        _check_certificates("TLS_CLIENT_CA_FILE", config.tls_client_ca_file, client_ca)
    elif config.tls_client_ca_file:
        raise ConfigError(
            f"{PREFIX}TLS_CLIENT_CA_FILE is set but {PREFIX}TLS_CLIENT_AUTH is none: set it to "
            "require to verify client certificates, or unset the CA file"
        )
    else:
        _warn_unused_certificate_entries(tokens, "client certificates are not requested")

    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=require
    )
    return Transport(
        Security.MUTUAL_TLS if require else Security.TLS,
        credentials,
        certificate_file=config.tls_cert_file,
        client_ca_file=config.tls_client_ca_file,
    )


def _read(name: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {PREFIX}{name} {path}: {exc.strerror}") from exc


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason without the ``[SSL]`` library tag and the ``(_ssl.c:123)`` place."""
    text = exc.reason or (exc.args[1] if len(exc.args) > 1 else str(exc))
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(text))
    return re.sub(r"^\[\w+\]\s*", "", text)


def _check_certificates(name: str, path: str, data: bytes) -> None:
    """``data`` holds at least one PEM certificate that OpenSSL can parse."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(
            f"{PREFIX}{name} {path}: no PEM certificate in it (-----BEGIN CERTIFICATE)"
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{PREFIX}{name} {path}: not a valid PEM certificate ({_reason(exc)})"
        ) from exc


def _no_password() -> bytes:
    return b""  # an encrypted key then fails to load instead of prompting on the terminal


def _check_key(cert_path: str, key_path: str, key: bytes) -> None:
    """The key parses, is not encrypted, and belongs to the first certificate of the chain."""
    text = key.decode("ascii", errors="replace")
    if "PRIVATE KEY-----" not in text:
        raise ConfigError(f"{PREFIX}TLS_KEY_FILE {key_path}: no PEM private key in it")
    if "ENCRYPTED" in text:
        raise ConfigError(
            f"{PREFIX}TLS_KEY_FILE {key_path}: the key is encrypted; gRPC needs it unencrypted "
            "(protect the file instead: readable only by the service's user)"
        )
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            cert_path, key_path, password=_no_password
        )
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{PREFIX}TLS_KEY_FILE {key_path} is not the key of the certificate in "
                f"{PREFIX}TLS_CERT_FILE {cert_path}"
            ) from exc
        raise ConfigError(
            f"{PREFIX}TLS_KEY_FILE {key_path} with {PREFIX}TLS_CERT_FILE {cert_path}: "
            f"OpenSSL cannot load them ({_reason(exc)})"
        ) from exc
    except OSError as exc:  # the file changed between the two reads
        raise ConfigError(f"cannot read {PREFIX}TLS_KEY_FILE {key_path}: {exc.strerror}") from exc
    mode = Path(key_path).stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%sTLS_KEY_FILE %s is readable by other users (mode %o); make it private",
            PREFIX,
            key_path,
            stat.S_IMODE(mode),
            extra={"action": "tls.key_file_permissions"},
        )


def _warn_unused_certificate_entries(tokens: TokenTable, why: str) -> None:
    if tokens.certificate_names:
        log.warning(
            "the token table maps client certificates (%s) but %s: those entries are unused",
            ", ".join(sorted(tokens.certificate_names)),
            why,
            extra={"action": "tls.unused_certificate_entries"},
        )
