"""The JSON endpoints that answer what an RPC answers (``recovery-metrics``, ``refunds``): the
query parameters -> the RPC request they stand for (one parameter per request field, by its
proto name, parsed as proto3 JSON parses that field; an enum also by its short name,
``group_by=GATEWAY`` for ``METRICS_GROUP_BY_GATEWAY``), and the answer: the bearer token and
role checked as for gRPC, the response in proto3 JSON with the proto field names, errors as
JSON (400 naming the field, 401, 403)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from service.auth import Role, TokenTable
from service.errors import InvalidArgument, PermissionDenied, Unauthenticated

M = TypeVar("M", bound=Message)


def request_from_query(
    params: Mapping[str, str],
    request: M,
    fields: tuple[str, ...],
    enum_prefixes: Mapping[str, str],
) -> M:
    """Fill ``request`` from ``params``; an unknown parameter or a value that does not parse is
    INVALID_ARGUMENT naming it. ``enum_prefixes`` maps an enum field to the prefix its short
    names lack."""
    values: dict[str, str] = {}
    for name, value in params.items():
        if name not in fields:
            raise InvalidArgument(name, f"unknown parameter; known: {', '.join(fields)}")
        values[name] = value
    for name, prefix in enum_prefixes.items():
        short = values.get(name)
        if short is not None and not short.startswith(prefix):
            values[name] = f"{prefix}{short.upper()}"
    for name, value in values.items():
        try:
            json_format.ParseDict({name: value}, request, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            raise InvalidArgument(name, f"cannot be read: {exc}") from None
    return request


async def answer(
    request: web.Request,
    tokens: TokenTable,
    role: Role,
    call: Callable[[Mapping[str, str]], Awaitable[Message]],
) -> web.Response:
    """``call(query parameters)``'s response as JSON, for a caller with ``role``."""
    try:
        principal = tokens.authenticate(request.headers.get("Authorization"))
        principal.require(role)
        response = await call(request.query)
    except Unauthenticated as exc:
        return error(401, str(exc))
    except PermissionDenied as exc:
        return error(403, str(exc))
    except InvalidArgument as exc:
        return error(400, str(exc), field=exc.field)
    return web.json_response(json_format.MessageToDict(response, preserving_proto_field_name=True))


def error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)
