"""Principals and roles: a caller is authenticated by a bearer token, or by a verified client
certificate, mapped to a principal name and a set of roles in one table."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.errors import ConfigError, PermissionDenied, Unauthenticated

CERT_PREFIX = "cert:"
DIGEST_PREFIX = "sha256:"


class Role(StrEnum):
    PAYMENT_RECORD = "payment:record"
    REFUND_CREATE = "refund:create"
    REFUND_APPROVE = "refund:approve"
    RETRY_MANAGE = "retry:manage"
    READ = "read"
    ADMIN = "admin"  # every role, and approval outside the refund window


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    roles: frozenset[Role]

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def require(self, role: Role) -> None:
        if role not in self.roles and not self.is_admin:
            raise PermissionDenied(f"{self.name} lacks the role {role.value!r}")


SYSTEM = Principal("system:billing-job", frozenset({Role.ADMIN}))


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """A client certificate the TLS handshake has already verified against the configured
    client CA (only then does gRPC report one): its subject's common name and its subject
    alternative names (URIs, DNS names, e-mail addresses, IP addresses, as gRPC lists them)."""

    common_name: str | None
    alternative_names: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """Every name a ``cert:<name>`` entry may match: the SANs, then the CN."""
        cn = (self.common_name,) if self.common_name else ()
        return (*self.alternative_names, *cn)

    def describe(self) -> str:
        sans = ", ".join(self.alternative_names) or "none"
        return f"CN={self.common_name or '(none)'}, SANs: {sans}"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return token.strip()


class TokenTable:
    """Bearer tokens and client-certificate names -> principals.

    Tokens are kept only as SHA-256 digests, so the table (and a memory dump of it) holds no
    usable secret. A presented token is compared in constant time: its digest is compared with
    ``hmac.compare_digest`` against *every* entry, without stopping at a match, so the time
    taken depends only on the presented token's length (which the caller knows) and the
    number of entries, never on how much of a stored digest it shares. A ``dict`` lookup by
    digest would not be constant-time (the bucket probe and the final ``memcmp`` stop early),
    and what it could leak is at most whether, and how far, the candidate's digest agrees with
    a stored digest; learning a digest byte by byte does not help find a token with that digest
    (SHA-256 is preimage-resistant), so even that lookup would leak nothing useful. The full
    scan is cheap (tables have tens of entries) and makes the argument unnecessary.

    Certificate entries (``cert:<name>``) are not secrets: the certificate was proven by the
    TLS handshake, and the name only selects the principal.
    """

    def __init__(
        self,
        entries: Mapping[str, Principal],
        certificates: Mapping[str, Principal] | None = None,
    ) -> None:
        self._by_digest = {_digest(token): p for token, p in entries.items()}
        self._by_certificate = dict(certificates or {})

    @classmethod
    def parse(cls, text: str, source: str) -> TokenTable:
        """``{"<token>": {"principal": "alice", "roles": ["refund:create", "read"]}, ...}``;
        a key ``sha256:<hex>`` gives the token's digest instead of the token; a key
        ``cert:<name>`` maps a verified client certificate whose subject alternative name
        (URI, DNS name, ...) or common name equals ``<name>``."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{source}: expected a non-empty JSON object of tokens")
        table = cls({})
        valid_roles = {r.value for r in Role}
        for key, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("principal"), str):
                raise ConfigError(f"{source}: token entry needs a 'principal' string")
            roles = entry.get("roles", [])
            unknown = [r for r in roles if r not in valid_roles]
            if unknown or not isinstance(roles, list):
                raise ConfigError(
                    f"{source}: unknown roles {unknown} for {entry['principal']!r}; "
                    f"known: {sorted(valid_roles)}"
                )
            principal = Principal(entry["principal"], frozenset(Role(r) for r in roles))
            if key.startswith(CERT_PREFIX):
                name = key.removeprefix(CERT_PREFIX)
                if not name or name != name.strip():
                    raise ConfigError(
                        f"{source}: {key!r} for {principal.name!r} needs a certificate name "
                        "after 'cert:', without surrounding spaces"
                    )
                table._by_certificate[name] = principal
                continue
            if key.startswith(DIGEST_PREFIX):
                try:
                    digest = bytes.fromhex(key.removeprefix(DIGEST_PREFIX))
                except ValueError:
                    digest = b""
                if len(digest) != hashlib.sha256().digest_size:
                    raise ConfigError(
                        f"{source}: the sha256 digest for {principal.name!r} must be 64 hex digits"
                    )
            else:
                digest = _digest(key)
            table._by_digest[digest] = principal
        return table

    @classmethod
    def from_file(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read tokens file {path}: {exc.strerror}") from exc
        return cls.parse(text, str(path))

    @property
    def certificate_names(self) -> frozenset[str]:
        return frozenset(self._by_certificate)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of a bearer token (``authorization`` metadata), compared in constant
        time (see the class docstring)."""
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        digest = _digest(_bearer(authorization))
        found: Principal | None = None
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found

    def identify(self, authorization: str | None, certificate: PeerCertificate | None) -> Principal:
        """The caller's principal. A bearer token, when present, decides and must be valid,
        whatever certificate came with it: the certificate authenticated the connection (a
        service), the token names who the call is for (that service, or a person it acts
        for). Without a token, a verified client certificate whose name has a ``cert:``
        entry is the principal; several entries matching one certificate with different
        principals are refused rather than one chosen by order."""
        if authorization or certificate is None:
            return self.authenticate(authorization)
        matches = {
            self._by_certificate[name]
            for name in certificate.names()
            if name in self._by_certificate
        }
        if not matches:
            raise Unauthenticated(
                f"client certificate ({certificate.describe()}) has no 'cert:<name>' entry "
                "in the token table, and no bearer token came with the call"
            )
        if len(matches) > 1:
            names = sorted(p.name for p in matches)
            raise Unauthenticated(
                f"client certificate ({certificate.describe()}) matches entries of several "
                f"principals {names}: give it one"
            )
        (principal,) = matches
        return principal
