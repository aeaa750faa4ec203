"""The analytics dashboard on the HTTP port, and the JSON list of refunds it shows.

- ``/`` redirects (302) to ``/api/billing/refund-retry-workflows/dashboard``: one HTML page with
  our small script and stylesheet (``service/http/static/``) and plotly.js as the PyPI package
  ``plotly`` ships it (``plotly/package_data/plotly.min.js``: nothing fetched from a CDN, so the
  page works without internet). These are public assets without data; the plotly file is named
  by a hash of its content and cached for a year, ours are revalidated (ETag).
- The page reads its figures with a bearer token (role ``read``) that the person gives in the
  URL fragment (``#token=...``, which browsers never send to a server) or in a form: from
  ``recovery-metrics`` (``service.http.analytics``) and from
  ``GET /api/billing/refund-retry-workflows/refunds?status=PENDING_APPROVAL&page_size=20``:
  the ListRefunds RPC's answer in proto3 JSON with the proto field names (``status`` also
  takes the enum's full name; ``page_token``, ``payment_id``, ``customer_id``,
  ``create_time_start`` and ``create_time_end`` as in the RPC). Errors are JSON: 400 naming the
  field, 401, 403.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import importlib.resources
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass

import iso4217
from aiohttp import web

from refundretry.v1 import refund_retry_service_pb2 as pb
from repository.database import Database
from service import convert, messages, refunds
from service.auth import Role, TokenTable
from service.http.analytics import PREFIX
from service.http.params import answer, request_from_query

DASHBOARD = f"{PREFIX}/dashboard"
ASSETS = f"{DASHBOARD}/assets"
REFUND_FIELDS = (
    "page_size",
    "page_token",
    "status",
    "payment_id",
    "customer_id",
    "create_time_start",
    "create_time_end",
)
OWN_ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
# The page's scripts are ours and plotly's, from this origin; plotly sets inline styles.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
REVALIDATE = "no-cache"
YEAR = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes
    digest: str  # hex sha256 of the body

    @property
    def etag(self) -> str:
        return f'"{self.digest[:32]}"'


def _asset(body: bytes) -> Asset:
    return Asset(body, gzip.compress(body, 6), hashlib.sha256(body).hexdigest())


def _static(name: str) -> bytes:
    return (importlib.resources.files("service.http") / "static" / name).read_bytes()


@functools.cache
def plotly_js() -> Asset:
    """plotly.js as the ``plotly`` wheel ships it (read, hashed and compressed once)."""
    path = importlib.resources.files("plotly") / "package_data" / "plotly.min.js"
    return _asset(path.read_bytes())


def plotly_name() -> str:
    return f"plotly-{plotly_js().digest[:16]}.min.js"


def currency_exponents() -> dict[str, int]:
    """ISO 4217 minor-unit exponents, for the page to show minor units as amounts."""
    return {c.code: c.exponent for c in iso4217.Currency if isinstance(c.exponent, int)}


@functools.cache
def own_asset(name: str) -> Asset:
    return _asset(_static(name))


@functools.cache
def page() -> Asset:
    """dashboard.html with the plotly file's name and the currency exponents filled in."""
    template = string.Template(_static("dashboard.html").decode())
    exponents = json.dumps(currency_exponents(), separators=(",", ":"), sort_keys=True)
    return _asset(template.substitute(plotly=plotly_name(), currencies=exponents).encode())


class DashboardRoutes:
    def __init__(self, db: Database, tokens: TokenTable) -> None:
        self._db = db
        self._tokens = tokens

    def __call__(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self._root)
        router.add_get(DASHBOARD, self._page)
        router.add_get(f"{ASSETS}/{{name}}", self._asset)
        router.add_get(f"{PREFIX}/refunds", self._refunds)

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(DASHBOARD)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        # The first call reads and compresses plotly.js (5 MB): not on the event loop.
        asset = await asyncio.to_thread(page)
        return _send(request, asset, "text/html", REVALIDATE, SECURITY_HEADERS)

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == await asyncio.to_thread(plotly_name):
            return _send(request, plotly_js(), "text/javascript", YEAR)
        if name in OWN_ASSETS:
            asset = await asyncio.to_thread(own_asset, name)
            return _send(request, asset, OWN_ASSETS[name], REVALIDATE)
        raise web.HTTPNotFound(text=f"no asset {name!r}\n")

    async def _refunds(self, request: web.Request) -> web.Response:
        async def call(params: Mapping[str, str]) -> pb.ListRefundsResponse:
            query = messages.list_refunds(parse_refunds_request(params))
            rows, token = await refunds.list_refunds(self._db, query)
            return pb.ListRefundsResponse(
                refunds=[convert.refund(r) for r in rows], next_page_token=token
            )

        return await answer(request, self._tokens, Role.READ, call)


def parse_refunds_request(params: Mapping[str, str]) -> pb.ListRefundsRequest:
    """The ListRefunds request from query parameters (``service.http.params``)."""
    return request_from_query(
        params, pb.ListRefundsRequest(), REFUND_FIELDS, {"status": "REFUND_STATUS_"}
    )


def _send(
    request: web.Request,
    asset: Asset,
    content_type: str,
    cache: str,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    headers = {"Cache-Control": cache, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    headers.update(extra or {})
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)
