"""The ``adyen`` gateway's settings: enabled by its key, checked together at start-up, the key
read from the environment or a file and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Config
from service.errors import ConfigError
from service.server import build_gateways

KEY = "AQEyhmfxLI3MaBFLw0m_a_secret_adyen_key"


async def gateways_of(env: dict[str, str]) -> set[str]:
    gateways = build_gateways(Config.from_env(env))
    try:
        return set(gateways)
    finally:
        for gateway in gateways.values():
            await gateway.close()


async def test_the_adyen_gateway_is_enabled_by_its_key_and_merchant_account() -> None:
    assert "adyen" not in await gateways_of({})
    enabled = await gateways_of(
        {
            "REFUND_RETRY_ADYEN_API_KEY": KEY,
            "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT": "RefundRetryECOM",
        }
    )
    assert "adyen" in enabled


async def test_the_key_can_come_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "adyen-key"
    key_file.write_text(KEY + "\n")
    config = Config.from_env(
        {
            "REFUND_RETRY_ADYEN_API_KEY_FILE": str(key_file),
            "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT": "RefundRetryECOM",
        }
    )

    assert config.adyen_api_key == KEY
    assert KEY not in repr(config)
    assert "adyen" in await gateways_of(
        {
            "REFUND_RETRY_ADYEN_API_KEY_FILE": str(key_file),
            "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT": "RefundRetryECOM",
        }
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REFUND_RETRY_ADYEN_API_KEY": KEY}, "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT"),
        (
            {
                "REFUND_RETRY_ADYEN_API_KEY": KEY,
                "REFUND_RETRY_ADYEN_MERCHANT_ACCOUNT": "RefundRetryECOM",
                "REFUND_RETRY_ADYEN_ENVIRONMENT": "live",
            },
            "REFUND_RETRY_ADYEN_LIVE_URL_PREFIX",
        ),
        ({"REFUND_RETRY_ADYEN_ENVIRONMENT": "prod"}, "REFUND_RETRY_ADYEN_ENVIRONMENT"),
        (
            {"REFUND_RETRY_ADYEN_RECURRING_PROCESSING_MODEL": "Yearly"},
            "REFUND_RETRY_ADYEN_RECURRING_PROCESSING_MODEL",
        ),
        ({"REFUND_RETRY_ADYEN_API_BASE": "ftp://x"}, "REFUND_RETRY_ADYEN_API_BASE"),
        (
            {
                "REFUND_RETRY_ADYEN_API_KEY": KEY,
                "REFUND_RETRY_ADYEN_API_KEY_FILE": "/run/secrets/adyen",
            },
            "REFUND_RETRY_ADYEN_API_KEY_FILE",
        ),
    ],
)
async def test_a_bad_adyen_setting_stops_start_up_naming_it(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        await gateways_of(env)
    assert KEY not in str(raised.value)
