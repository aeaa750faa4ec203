"""``/healthz`` (the process is alive and its event loop answers) and ``/readyz`` (it can do
its work: the database answered the last check), for container and load-balancer probes."""

from __future__ import annotations

from aiohttp import web

from service.health import DatabaseHealth


class HealthRoutes:
    def __init__(self, database: DatabaseHealth) -> None:
        self._database = database

    def __call__(self, router: web.UrlDispatcher) -> None:
        router.add_get("/healthz", self._healthz)
        router.add_get("/readyz", self._readyz)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        db = self._database
        body = {
            "status": "ready" if db.ready else "not ready",
            "database": "ok" if db.ready else db.reason,
        }
        return web.json_response(body, status=200 if db.ready else 503)
