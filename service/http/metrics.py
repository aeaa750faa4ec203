"""``GET /metrics``: the service's Prometheus metrics (``service.metrics``) in the text
exposition format, for a Prometheus server to scrape."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.metrics import Metrics


class MetricsRoutes:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def __call__(self, router: web.UrlDispatcher) -> None:
        router.add_get("/metrics", self._metrics_page)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body = await self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
