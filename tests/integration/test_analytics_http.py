"""The analytics as JSON on the HTTP port (/api/billing/refund-retry-workflows/): the same
numbers as the GetRecoveryMetrics RPC, the same tokens and role, errors as JSON naming the
field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format

from refundretry.v1 import analytics_pb2
from service import analytics
from service.server import Service
from tests.integration import builders as b
from tests.integration import retry_builders as rb
from tests.integration.conftest import TOKENS, Client

PATH = "/api/billing/refund-retry-workflows/recovery-metrics"


@pytest.fixture
def config_overrides() -> dict[str, str]:
    """The test tokens and one without the read role."""
    writer = {"principal": "writer", "roles": ["refund:create"]}
    return {"REFUND_RETRY_TOKENS": json.dumps({**TOKENS, "t-writer": writer})}


def window() -> dict[str, str]:
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "start_time": (now - timedelta(days=2)).isoformat().replace("+00:00", "Z"),
        "end_time": (now + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
    }


async def get(service: Service, params: dict[str, str], token: str | None) -> tuple[int, Any]:
    assert service.http is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{service.http.port}{PATH}", params=params, headers=headers
        ) as response,
    ):
        return response.status, await response.json()


async def test_the_json_is_what_the_rpc_answers(client: Client, service: Service) -> None:
    await rb.schedule(client, "test-fast", [60, 60], 4)
    for index, outcome in enumerate(["succeed", "decline:insufficient_funds", "succeed"]):
        failure = rb.failure(outcome=outcome, amount=1000 + index, card=f"pm_{index}")
        await rb.record(client, failure)
    await rb.run_retries(client, ahead=timedelta(days=1))
    payment = await b.record_payment(client)
    await b.create_refund(client, payment.payment_id, amount=300)
    await analytics.fold(service.db, service.config.analytics_time_zones)

    for group_by in ("DAY", "GATEWAY", "DECLINE_CLASS", "CURRENCY"):
        params = {**window(), "time_zone": "UTC", "group_by": group_by}
        status, body = await get(service, params, "t-reader")
        assert status == 200, body
        request = analytics_pb2.GetRecoveryMetricsRequest()
        json_format.ParseDict({**params, "group_by": f"METRICS_GROUP_BY_{group_by}"}, request)
        rpc = await client.call("t-reader", "GetRecoveryMetrics", request)
        assert body == json_format.MessageToDict(rpc, preserving_proto_field_name=True)
    assert [g["key"] for g in body["groups"]] == ["USD"]  # the last grouping: by currency


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"group_by": "WEEKDAY"}, "group_by"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_parameters_are_400_naming_the_field(
    service: Service, params: dict[str, str], field: str
) -> None:
    status, body = await get(service, {**window(), **params}, "t-reader")
    assert status == 400
    assert body["field"] == field
    assert body["error"].startswith(f"{field}:")


async def test_a_token_with_the_read_role_is_needed(service: Service) -> None:
    assert (await get(service, window(), None))[0] == 401
    assert (await get(service, window(), "not-a-token"))[0] == 401
    assert (await get(service, window(), "t-writer"))[0] == 403
