"""Principals and roles: bearer tokens map to a principal name and a set of roles."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from service.errors import ConfigError, PermissionDenied, Unauthenticated


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


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Bearer tokens -> principals. Tokens are kept only as SHA-256 digests."""

    def __init__(self, entries: Mapping[str, Principal]) -> None:
        self._by_digest = {_digest(token): p for token, p in entries.items()}

    @classmethod
    def parse(cls, text: str, source: str) -> TokenTable:
        """``{"<token>": {"principal": "alice", "roles": ["refund:create", "read"]}, ...}``;
        a key ``sha256:<hex>`` gives the token's digest instead of the token."""
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
            if key.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(key.removeprefix("sha256:"))
                except ValueError as exc:
                    raise ConfigError(f"{source}: malformed sha256 token digest") from exc
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

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        digest = _digest(token.strip())
        for known, principal in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return principal
        raise Unauthenticated("unknown bearer token")
