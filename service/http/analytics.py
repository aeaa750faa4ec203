"""The analytics as JSON under ``/api/billing/refund-retry-workflows/``, for the dashboard and
for tools that do not speak gRPC: the same query, validation and numbers as the
GetRecoveryMetrics RPC (``service.analytics``), the same bearer tokens and ``read`` role.

``GET /api/billing/refund-retry-workflows/recovery-metrics?start_time=2026-11-01T00:00:00Z
&end_time=2026-12-01T00:00:00Z&time_zone=UTC&group_by=GATEWAY&currency_code=USD`` answers the
RPC's response in proto3 JSON with the proto field names (``group_by`` also takes the enum's
full name). Errors are JSON too: 400 with the field, 401, 403.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from google.protobuf import json_format

from refundretry.v1 import analytics_pb2
from repository.database import Database
from service import analytics
from service.auth import Role, TokenTable
from service.errors import InvalidArgument, PermissionDenied, Unauthenticated

PREFIX = "/api/billing/refund-retry-workflows"
FIELDS = ("start_time", "end_time", "time_zone", "group_by", "currency_code")


class AnalyticsRoutes:
    def __init__(self, db: Database, tokens: TokenTable, zones: Sequence[str]) -> None:
        self._db = db
        self._tokens = tokens
        self._zones = tuple(zones)

    def __call__(self, router: web.UrlDispatcher) -> None:
        router.add_get(f"{PREFIX}/recovery-metrics", self._recovery_metrics)

    async def _recovery_metrics(self, request: web.Request) -> web.Response:
        try:
            principal = self._tokens.authenticate(request.headers.get("Authorization"))
            principal.require(Role.READ)
            query = analytics.query_of(parse_request(request.query))
            metrics = await analytics.recovery_metrics(self._db, query, zones=self._zones)
        except Unauthenticated as exc:
            return _error(401, str(exc))
        except PermissionDenied as exc:
            return _error(403, str(exc))
        except InvalidArgument as exc:
            return _error(400, str(exc), field=exc.field)
        body = json_format.MessageToDict(
            analytics.response_message(metrics), preserving_proto_field_name=True
        )
        return web.json_response(body)


def parse_request(params: object) -> analytics_pb2.GetRecoveryMetricsRequest:
    """The RPC request from query parameters; an unknown parameter or a value that does not
    parse is INVALID_ARGUMENT naming it."""
    assert hasattr(params, "items")
    values: dict[str, str] = {}
    for name, value in params.items():
        if name not in FIELDS:
            raise InvalidArgument(name, f"unknown parameter; known: {', '.join(FIELDS)}")
        values[name] = value
    group = values.get("group_by")
    if group is not None and not group.startswith("METRICS_GROUP_BY_"):
        values["group_by"] = f"METRICS_GROUP_BY_{group.upper()}"
    request = analytics_pb2.GetRecoveryMetricsRequest()
    for name, value in values.items():
        try:
            json_format.ParseDict({name: value}, request, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            raise InvalidArgument(name, f"cannot be read: {exc}") from None
    return request


def _error(status: int, message: str, **extra: str) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)
