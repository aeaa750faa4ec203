"""The HTTP port itself: started by ``serve`` beside gRPC, a clear error when its port is taken,
stopped with the service; webhooks refused while no secret is configured; Adyen's optional basic
authentication; the settings of webhook secrets (from the environment or files, never shown)."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from service.config import Config
from service.errors import ConfigError
from service.server import Service, start
from tests.integration.cli import run_cli
from tests.integration.conftest import test_config as config_of
from tests.integration.test_lifecycle import serve_env
from tests.integration.webhook_builders import (
    ADYEN_KEY,
    STRIPE_SECRET,
    adyen_body,
    adyen_item,
    adyen_sign,
    post_adyen,
    post_stripe,
    stripe_event,
    webhook_rows,
)

USER, PASSWORD = "adyen-notifier", "correct horse battery staple"


@asynccontextmanager
async def serving(database_url: str, **settings: str) -> AsyncIterator[Service]:
    service = await start(config_of(database_url, **settings), run_billing_loop=False)
    try:
        yield service
    finally:
        await service.stop()


async def test_without_secrets_every_webhook_is_refused(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with serving(database_url) as service:
        stripe = await post_stripe(service, stripe_event("customer.created", {"id": "cus_1"}))
        adyen = await post_adyen(service, adyen_body(adyen_sign(adyen_item("CAPTURE", "1"))))
        stored = await webhook_rows(service.db, "stripe") + await webhook_rows(service.db, "adyen")
    assert (stripe.status, adyen.status) == (401, 401)
    assert "no Stripe webhook secret" in stripe.text
    assert "no Adyen HMAC key" in adyen.text
    assert stored == []
    (started,) = [r for r in caplog.records if getattr(r, "action", "") == "http.started"]
    assert f"127.0.0.1:{service.http.port if service.http else 0}" in started.getMessage()
    assert "stripe refused: no secret configured" in started.getMessage()


async def test_adyen_basic_auth_is_required_when_configured(database_url: str) -> None:
    settings = {
        "REFUND_RETRY_ADYEN_WEBHOOK_HMAC_KEYS": ADYEN_KEY,
        "REFUND_RETRY_ADYEN_WEBHOOK_USERNAME": USER,
        "REFUND_RETRY_ADYEN_WEBHOOK_PASSWORD": PASSWORD,
    }
    body = adyen_body(adyen_sign(adyen_item("CAPTURE", "8815000000000001")))
    async with serving(database_url, **settings) as service:
        missing = await post_adyen(service, body)
        wrong = await post_adyen(service, body, auth=(USER, "guess"))
        other_user = await post_adyen(service, body, auth=("someone", PASSWORD))
        right = await post_adyen(service, body, auth=(USER, PASSWORD))
        rows = await webhook_rows(service.db, "adyen")
    assert (missing.status, wrong.status, other_user.status) == (401, 401, 401)
    assert (right.status, right.text) == (200, "[accepted]")
    assert [r["status"] for r in rows] == ["IGNORED"]


async def test_routes_answer_only_what_they_serve(database_url: str) -> None:
    async with serving(database_url, REFUND_RETRY_STRIPE_WEBHOOK_SECRET=STRIPE_SECRET) as service:
        assert service.http is not None
        base = f"http://127.0.0.1:{service.http.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/webhooks/stripe") as response:
                get_status = response.status
            async with session.post(f"{base}/webhooks/paypal", data=b"{}") as response:
                unknown_status = response.status
            big = io.BytesIO(b"x" * (1024 * 1024 + 1))
            async with session.post(f"{base}/webhooks/stripe", data=big) as response:
                too_big = response.status
    assert (get_status, unknown_status, too_big) == (405, 404, 413)


async def test_the_http_port_closes_with_the_service(database_url: str) -> None:
    async with serving(database_url) as service:
        assert service.http is not None
        port = service.http.port
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


async def test_a_taken_http_port_is_a_clear_error_and_nothing_keeps_running(
    database_url: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen for HTTP on 127.0.0.1:{port}"):
            await start(
                config_of(database_url, REFUND_RETRY_HTTP_PORT=str(port)),
                run_billing_loop=False,
            )
        code, out, err = await run_cli(
            serve_env(database_url, 0, HTTP_PORT=str(port)), "serve", seconds=30
        )
    assert code == 1, (out, err)
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("refund-retry:")]
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in line
    assert "REFUND_RETRY_HTTP_PORT" in line


# -- settings ----------------------------------------------------------------------------------


def env(**settings: str) -> dict[str, str]:
    return {f"REFUND_RETRY_{k}": v for k, v in settings.items()}


def test_webhook_secrets_come_from_files_and_are_never_shown(tmp_path: Path) -> None:
    secret_file = tmp_path / "stripe-webhook-secret"
    secret_file.write_text(STRIPE_SECRET + "\n")
    keys_file = tmp_path / "adyen-hmac"
    keys_file.write_text(ADYEN_KEY)
    password_file = tmp_path / "adyen-password"
    password_file.write_text(PASSWORD)
    config = Config.from_env(
        env(
            STRIPE_WEBHOOK_SECRET_FILE=str(secret_file),
            ADYEN_WEBHOOK_HMAC_KEYS_FILE=str(keys_file),
            ADYEN_WEBHOOK_USERNAME=USER,
            ADYEN_WEBHOOK_PASSWORD_FILE=str(password_file),
        )
    )
    assert config.stripe_webhook_secret == STRIPE_SECRET
    assert config.adyen_webhook_hmac_keys == ADYEN_KEY
    assert config.adyen_webhook_password == PASSWORD
    shown = repr(config)
    for secret in (STRIPE_SECRET, ADYEN_KEY, PASSWORD):
        assert secret not in shown


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"ADYEN_WEBHOOK_HMAC_KEYS": "not-hex-at-all"}, "REFUND_RETRY_ADYEN_WEBHOOK_HMAC_KEYS"),
        ({"ADYEN_WEBHOOK_USERNAME": USER}, "REFUND_RETRY_ADYEN_WEBHOOK_PASSWORD"),
        ({"ADYEN_WEBHOOK_PASSWORD": PASSWORD}, "REFUND_RETRY_ADYEN_WEBHOOK_USERNAME"),
        ({"HTTP_PORT": "70000"}, "REFUND_RETRY_HTTP_PORT"),
        ({"BREAKER_FAILURES": "0"}, "REFUND_RETRY_BREAKER_FAILURES"),
        (
            {"STRIPE_WEBHOOK_SECRET": "whsec_a", "STRIPE_WEBHOOK_SECRET_FILE": "/x"},
            "set only one of",
        ),
    ],
)
def test_bad_webhook_settings_are_refused_naming_them(settings: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_env(env(**settings))
    assert says in str(refused.value)
    assert "not-hex-at-all" not in str(refused.value)  # a secret's value is never echoed
    assert PASSWORD not in str(refused.value)


def test_the_defaults_serve_http_on_8080() -> None:
    config = Config.from_env({})
    assert (config.http_host, config.http_port) == ("0.0.0.0", 8080)  # noqa: S104
    assert (config.breaker_failures, config.breaker_cooldown_seconds) == (5, 30)
    assert json.dumps(config.stripe_webhook_secret) == '""'
