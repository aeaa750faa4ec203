"""The analytics as JSON under ``/api/billing/refund-retry-workflows/``, for the dashboard and
for tools that do not speak gRPC: the same query, validation and numbers as the
GetRecoveryMetrics RPC (``service.analytics``), the same bearer tokens and ``read`` role.

``GET /api/billing/refund-retry-workflows/recovery-metrics?start_time=2026-11-01T00:00:00Z
&end_time=2026-12-01T00:00:00Z&time_zone=UTC&group_by=GATEWAY&currency_code=USD`` answers the
RPC's response in proto3 JSON with the proto field names (``group_by`` also takes the enum's
full name). Errors are JSON too: 400 with the field, 401, 403.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import web

from refundretry.v1 import analytics_pb2
from repository.database import Database
from service import analytics
from service.auth import Role, TokenTable
from service.http.params import answer, request_from_query

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
        async def call(params: Mapping[str, str]) -> analytics_pb2.GetRecoveryMetricsResponse:
            query = analytics.query_of(parse_request(params))
            metrics = await analytics.recovery_metrics(self._db, query, zones=self._zones)
            return analytics.response_message(metrics)

        return await answer(request, self._tokens, Role.READ, call)


def parse_request(params: Mapping[str, str]) -> analytics_pb2.GetRecoveryMetricsRequest:
    """The RPC request from query parameters (``service.http.params``)."""
    return request_from_query(
        params,
        analytics_pb2.GetRecoveryMetricsRequest(),
        FIELDS,
        {"group_by": "METRICS_GROUP_BY_"},
    )
