"""One aiohttp server on its own port, beside gRPC, started and stopped with the service.

Each feature brings its routes as a :data:`Routes`: a function that adds them to the router
(``service.http.webhooks.WebhookRoutes`` for ``/webhooks/*``). Metrics, health and the dashboard
are more of the same: ``HttpServer(host, port, [webhooks, metrics, health, dashboard])``. The
server adds only what every route shares: no access log (each feature logs what matters, with
its ``action``), one JSON error log line and a plain 500 for an unexpected exception, and a
bounded request body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

log = logging.getLogger(__name__)

Routes = Callable[[web.UrlDispatcher], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 1024 * 1024  # gateway notifications are a few kB


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unexpected exception is logged once, in the service's log format, and answered 500
    (a gateway then sends its webhook again later)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception(
            "HTTP %s %s failed",
            request.method,
            request.path,
            extra={"action": "http.error", "method": request.method, "path": request.path},
        )
        return web.Response(status=500, text="internal error: the request can be sent again\n")


class HttpServer:
    """The HTTP server. :meth:`start` binds the port (0: a free one; :attr:`port` is the bound
    one); :meth:`stop` stops accepting, then lets requests in flight finish within
    ``shutdown_grace`` seconds."""

    def __init__(
        self,
        host: str,
        port: int,
        routes: Sequence[Routes],
        *,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors])
        for add in routes:
            add(self.app.router)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=shutdown_grace)
        self._started = False

    async def start(self) -> int:
        """Bind and serve; an ``OSError`` naming the address when the port is taken."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = exc.strerror or str(exc)
            raise OSError(
                exc.errno,
                f"cannot listen for HTTP on {self.host}:{self.port}: {reason} "
                "(is another process using the port? set REFUND_RETRY_HTTP_PORT)",
            ) from exc
        self._started = True
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        """Idempotent."""
        if self._started:
            self._started = False
            await self._runner.cleanup()
