"""How the demo reaches the service: the bearer tokens it may use and who plays which part
(the billing system, requesters, approvers, operations), and the gRPC channel."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENS = Path("examples") / "dev-tokens.json"


class DemoError(Exception):
    """What went wrong, in one line for the user, and the exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Token:
    secret: str
    principal: str
    roles: frozenset[str]

    def can(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


@dataclass(frozen=True, slots=True)
class Tokens:
    tokens: tuple[Token, ...]
    source: str  # where they came from, for messages


def parse_tokens(text: str, source: str) -> Tokens:
    """The service's token table format (``{"<token>": {"principal": ..., "roles": [...]}}``);
    entries the demo cannot present (``sha256:`` digests, ``cert:`` names) are left out."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DemoError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})", 2) from None
    if not isinstance(raw, dict):
        raise DemoError(f"{source}: expected a JSON object of tokens", 2)
    tokens = []
    for key, entry in raw.items():
        if key.startswith(("sha256:", "cert:")):
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("principal"), str):
            raise DemoError(f"{source}: the entry of a token needs a 'principal' string", 2)
        roles = entry.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise DemoError(f"{source}: 'roles' of {entry['principal']!r} is not a list", 2)
        tokens.append(Token(key, entry["principal"], frozenset(roles)))
    if not tokens:
        raise DemoError(f"{source}: no bearer tokens the demo can present", 2)
    return Tokens(tuple(tokens), source)


def load_tokens(token_file: str | None, env: Mapping[str, str] = os.environ) -> Tokens:
    """From ``--token-file``, else the server's own settings (``REFUND_RETRY_TOKENS_FILE``,
    ``REFUND_RETRY_TOKENS``), else the development tokens ``scripts/serve`` uses."""
    if token_file is None and env.get("REFUND_RETRY_TOKENS_FILE"):
        token_file = env["REFUND_RETRY_TOKENS_FILE"]
    if token_file is None and env.get("REFUND_RETRY_TOKENS"):
        return parse_tokens(env["REFUND_RETRY_TOKENS"], "REFUND_RETRY_TOKENS")
    if token_file is None:
        for candidate in (DEFAULT_TOKENS, ROOT / DEFAULT_TOKENS):
            if candidate.is_file():
                token_file = str(candidate)
                break
        else:
            raise DemoError(
                "no tokens: pass --token-file (the server's tokens file) or set "
                "REFUND_RETRY_TOKENS_FILE",
                2,
            )
    try:
        text = Path(token_file).read_text("utf-8")
    except OSError as exc:
        raise DemoError(f"cannot read the tokens file {token_file}: {exc.strerror}", 2) from None
    return parse_tokens(text, token_file)


@dataclass(frozen=True, slots=True)
class Cast:
    """Who does what: tokens chosen by role, people before admins."""

    reader: Token  # reads, and opens the dashboard
    recorder: Token  # the billing system: payments and failed payments
    requesters: tuple[Token, ...]  # ask for refunds
    approvers: tuple[Token, ...]  # approve or reject them (never their own)
    operator: Token  # retries and the billing job
    admin: Token | None  # the approval policy

    @property
    def everyone(self) -> tuple[Token, ...]:
        seen: dict[str, Token] = {}
        for token in (
            self.reader,
            self.recorder,
            *self.requesters,
            *self.approvers,
            self.operator,
            *((self.admin,) if self.admin else ()),
        ):
            seen.setdefault(token.secret, token)
        return tuple(seen.values())

    def approvers_for(self, requester: Token) -> tuple[Token, ...]:
        """Approvers other than the requester, one token per person."""
        people: dict[str, Token] = {}
        for token in self.approvers:
            if token.principal != requester.principal:
                people.setdefault(token.principal, token)
        return tuple(people.values())


def cast_of(tokens: Tokens) -> Cast:
    def holders(role: str) -> list[Token]:
        people = [t for t in tokens.tokens if role in t.roles and "admin" not in t.roles]
        admins = [t for t in tokens.tokens if "admin" in t.roles]
        return people + admins

    readers = sorted(holders("read"), key=lambda t: (t.roles != {"read"}, "admin" in t.roles))
    wanted = {
        "read": readers,
        "payment:record": holders("payment:record"),
        "refund:create": holders("refund:create"),
        "refund:approve": holders("refund:approve"),
        "retry:manage": holders("retry:manage"),
    }
    missing = [role for role, found in wanted.items() if not found]
    if missing:
        raise DemoError(
            f"{tokens.source}: no token with the role(s) {', '.join(missing)} (or admin); the "
            "demo records payments, requests, approves and retries",
            2,
        )
    requesters = [t for t in wanted["refund:create"] if "admin" not in t.roles] or wanted[
        "refund:create"
    ][:1]
    cast = Cast(
        reader=readers[0],
        recorder=wanted["payment:record"][0],
        requesters=tuple(requesters),
        approvers=tuple(wanted["refund:approve"]),
        operator=wanted["retry:manage"][0],
        admin=next((t for t in tokens.tokens if "admin" in t.roles), None),
    )
    if not any(cast.approvers_for(r) for r in cast.requesters):
        raise DemoError(
            f"{tokens.source}: every approver is also the requester; approvals need another "
            "person (a second token with refund:approve)",
            2,
        )
    return cast


def is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DemoError(f"cannot read the {what} {path}: {exc.strerror}", 2) from None


def open_channel(
    target: str,
    *,
    tls: bool,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """A plaintext channel, or TLS trusting ``ca_file`` (else the system's roots), with a
    client certificate for mutual TLS when ``cert_file`` and ``key_file`` are given."""
    if not tls:
        return grpc.aio.insecure_channel(target, options=options)
    if (cert_file is None) != (key_file is None):
        raise DemoError("--cert-file and --key-file go together (mutual TLS)", 2)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file"),
        private_key=_read(key_file, "client key file"),
        certificate_chain=_read(cert_file, "client certificate file"),
    )
    return grpc.aio.secure_channel(target, credentials, options=options)
