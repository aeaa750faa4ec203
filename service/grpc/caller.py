"""Who is calling: the bearer token in the call's metadata and the client certificate of its
TLS connection, as gRPC reports them, turned into a principal by the token table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from service.auth import PeerCertificate, Principal, TokenTable
from service.errors import Unauthenticated

Context = grpc.aio.ServicerContext[Any, Any]


def _text(values: Iterable[bytes] | None) -> list[str]:
    return [v.decode("utf-8", errors="replace") for v in values or ()]


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The client certificate of a TLS connection, or None (plaintext, or no certificate).

    gRPC fills the ``x509_*`` properties from the handshake, never from anything the client
    sends in metadata. This server asks for client certificates only in the mode that also
    verifies them against the client CA (``service.tls``), so a certificate reported here
    chains to that CA."""
    if _text(auth_context.get("transport_security_type")) != ["ssl"]:
        return None
    common_names = _text(auth_context.get("x509_common_name"))
    alternative = tuple(_text(auth_context.get("x509_subject_alternative_name")))
    if not common_names and not alternative:
        return None
    return PeerCertificate(common_names[0] if common_names else None, alternative)


def principal_of(tokens: TokenTable, context: Context) -> Principal:
    """The caller's principal (``TokenTable.identify`` says which credential wins)."""
    values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
    if len(values) > 1:
        raise Unauthenticated("send one 'authorization' metadata entry, not several")
    authorization = values[0] if values and isinstance(values[0], str) else None
    return tokens.identify(authorization, peer_certificate(context.auth_context()))
