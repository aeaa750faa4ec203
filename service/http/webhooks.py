"""``POST /webhooks/stripe`` and ``POST /webhooks/adyen``: verify the request as its gateway signs
it, then hand the events to ``service.webhooks``.

What a gateway gets back, and why:

* **401** when the signature is missing or wrong (Stripe: also when it is older than the SDK's
  tolerance; Adyen: when any item's HMAC is wrong, or when basic auth is configured and the
  request's does not match), or when no secret is configured: nothing is stored or changed.
  The gateway keeps sending the event for days, so events refused while a secret was missing
  are applied once it is configured.
* **400** when the request is signed but its body is not a notification of that gateway.
* **200** once every event in the request is stored with its effect, whatever the effect
  (applied, ignored, unmatched, a replay): Stripe gets a small JSON body, Adyen the body
  ``[accepted]`` it expects.
* **500** when storing failed (e.g. the database is down): the gateway sends it again later.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from service.gateways import adyen_notifications, stripe_events
from service.gateways.notifications import InvalidSignature, MalformedNotification
from service.webhooks import WebhookEvents

log = logging.getLogger(__name__)

STRIPE_PATH = "/webhooks/stripe"
ADYEN_PATH = "/webhooks/adyen"


@dataclass(frozen=True, slots=True)
class WebhookSecrets:
    """What verifies each gateway's webhooks; empty: that gateway's webhooks are refused."""

    stripe_secret: str = ""
    adyen_hmac_keys: Sequence[bytes] = ()
    # Adyen's optional basic authentication (both set, or neither).
    adyen_username: str = ""
    adyen_password: str = ""


class WebhookRoutes:
    """The webhook routes (a ``service.http.server.Routes``)."""

    def __init__(self, events: WebhookEvents, secrets: WebhookSecrets) -> None:
        self._events = events
        self._secrets = secrets

    def __call__(self, router: web.UrlDispatcher) -> None:
        router.add_post(STRIPE_PATH, self.stripe)
        router.add_post(ADYEN_PATH, self.adyen)

    def describe(self) -> dict[str, str]:
        """Which gateways' webhooks are accepted, for the start-up log (no secret in it)."""
        s = self._secrets
        return {
            "stripe": "verified" if s.stripe_secret else "refused: no secret configured",
            "adyen": (
                ("verified, with basic auth" if s.adyen_username else "verified")
                if s.adyen_hmac_keys
                else "refused: no HMAC key configured"
            ),
        }

    async def stripe(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get(stripe_events.SIGNATURE_HEADER)
        try:
            event = stripe_events.verify(body, header, self._secrets.stripe_secret)
        except InvalidSignature as exc:
            return _refused(request, stripe_events.GATEWAY, str(exc))
        except MalformedNotification as exc:
            return _malformed(request, stripe_events.GATEWAY, str(exc))
        handled = await self._events.handle(stripe_events.notification_of(event))
        return web.json_response(
            {"received": True, "outcome": handled.outcome.value.lower(), "note": handled.note}
        )

    async def adyen(self, request: web.Request) -> web.Response:
        gateway = adyen_notifications.GATEWAY
        if self._secrets.adyen_username and not self._basic_auth_matches(request):
            response = _refused(request, gateway, "basic authentication missing or wrong")
            response.headers["WWW-Authenticate"] = 'Basic realm="refund-retry webhooks"'
            return response
        body = await request.read()
        try:
            items = adyen_notifications.parse(body)
        except MalformedNotification as exc:
            return _malformed(request, gateway, str(exc))
        keys = self._secrets.adyen_hmac_keys
        if not keys:
            return _refused(request, gateway, "no Adyen HMAC key is configured")
        unsigned = [i for i, item in enumerate(items) if not adyen_notifications.verify(item, keys)]
        if unsigned:  # all or nothing: a request with one forged item is not Adyen's
            return _refused(
                request,
                gateway,
                f"HMAC signature missing or wrong on notificationItems {unsigned}",
            )
        live = adyen_notifications.live_flag(body)
        for item in items:
            await self._events.handle(adyen_notifications.notification_of(item, live=live))
        return web.Response(text=adyen_notifications.ACCEPTED)

    def _basic_auth_matches(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        username, _, password = decoded.partition(b":")
        # Both compared, always, in constant time: the answer says nothing about which failed.
        user_ok = hmac.compare_digest(username, self._secrets.adyen_username.encode())
        password_ok = hmac.compare_digest(password, self._secrets.adyen_password.encode())
        return user_ok & password_ok


def _refused(request: web.Request, gateway: str, reason: str) -> web.Response:
    log.warning(
        "%s webhook refused: %s",
        gateway,
        reason,
        extra={"action": "webhook.refused", "gateway": gateway, "remote": request.remote},
    )
    return web.Response(status=401, text=f"refused: {reason}\n")


def _malformed(request: web.Request, gateway: str, reason: str) -> web.Response:
    log.warning(
        "%s webhook malformed: %s",
        gateway,
        reason,
        extra={"action": "webhook.malformed", "gateway": gateway, "remote": request.remote},
    )
    return web.Response(status=400, text=f"malformed: {reason}\n")
