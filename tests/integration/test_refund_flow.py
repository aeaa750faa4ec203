"""Refunds from request to settled ledger entry, through gRPC, on the real database."""

from __future__ import annotations

import grpc
import pytest

from refundretry.v1 import refund_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from tests.integration import builders as b
from tests.integration.conftest import Client

RS = refund_pb2.RefundStatus
DS = refund_pb2.RefundDetailStatus


async def reconcile(client: Client) -> pb.ReconcileResponse:
    response: pb.ReconcileResponse = await client.call(
        "t-reader", "Reconcile", pb.ReconcileRequest()
    )
    return response


async def test_full_refund_settles_payment_items_and_ledger(client: Client) -> None:
    payment = await b.record_payment(client, items=[("plan", 9000, 1000), ("addon", 1500, 150)])
    refund = await b.create_refund(client, payment.payment_id)
    assert refund.status == RS.REFUND_STATUS_PENDING_APPROVAL
    assert refund.amount.minor_units == 11650
    assert {(i.item_id, i.amount.minor_units, i.tax.minor_units) for i in refund.items} == {
        ("plan", 9000, 1000),
        ("addon", 1500, 150),
    }
    approved = await b.approve(client, refund.refund_id)
    assert approved.status == RS.REFUND_STATUS_APPROVED
    assert [a.approver for a in approved.approvals] == ["alice@example.com"]

    summary = await b.run_job(client)
    assert summary.refunds_claimed == 1
    assert summary.refunds_succeeded == 1

    done = await b.get_refund(client, refund.refund_id)
    assert done.status == RS.REFUND_STATUS_SUCCEEDED
    assert done.details[0].status == DS.REFUND_DETAIL_STATUS_SUCCEEDED
    assert done.details[0].gateway_refund_id.startswith("sbre_")
    assert done.details[0].attempt_count == 1
    after = await b.get_payment(client, payment.payment_id)
    assert after.refunded_amount.minor_units == 11650
    assert after.refundable_amount.minor_units == 0
    assert after.pending_refund_amount.minor_units == 0
    report = await reconcile(client)
    assert report.balanced, report.issues
    (usd,) = report.totals
    assert usd.refunded.minor_units == 11650
    assert usd.ledger_debits.minor_units == usd.ledger_credits.minor_units == 11650 * 2


async def test_partial_by_amount_is_allocated_over_items_and_tax(client: Client) -> None:
    payment = await b.record_payment(client, items=[("a", 3333, 333), ("b", 6667, 667)])
    refund = await b.create_refund(client, payment.payment_id, amount=1001)
    parts = {i.item_id: (i.amount.minor_units, i.tax.minor_units) for i in refund.items}
    assert sum(net + tax for net, tax in parts.values()) == 1001
    # pro rata: item b is about twice item a, tax about a tenth of each
    assert parts["b"][0] > parts["a"][0] > parts["a"][1] > 0
    after = await b.get_payment(client, payment.payment_id)
    assert after.pending_refund_amount.minor_units == 1001
    assert after.refundable_amount.minor_units == 11000 - 1001


async def test_partial_by_items(client: Client) -> None:
    payment = await b.record_payment(client, items=[("a", 1000, 100), ("b", 2000, 200)])
    refund = await b.create_refund(client, payment.payment_id, items=[("a", None), ("b", 550)])
    parts = {i.item_id: (i.amount.minor_units, i.tax.minor_units) for i in refund.items}
    assert parts == {"a": (1000, 100), "b": (500, 50)}
    assert refund.amount.minor_units == 1650
    again = await b.create_refund(client, payment.payment_id, items=[("b", None)])
    assert {i.item_id: (i.amount.minor_units, i.tax.minor_units) for i in again.items} == {
        "b": (1500, 150)
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await b.create_refund(client, payment.payment_id, items=[("a", 1)])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "items[0]" in (refused.value.details() or "")


async def test_repeated_partial_refunds_up_to_captured_then_refused(client: Client) -> None:
    payment = await b.record_payment(client, items=[("plan", 1000, 0)])
    for _ in range(4):
        refund = await b.create_refund(client, payment.payment_id, amount=250)
        await b.approve(client, refund.refund_id)
    await b.run_job(client)
    after = await b.get_payment(client, payment.payment_id)
    assert after.refunded_amount.minor_units == 1000
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await b.create_refund(client, payment.payment_id, amount=1)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "exceeds the refundable" in (refused.value.details() or "")
    assert (await reconcile(client)).balanced


async def test_list_refunds_pages_through_every_refund_once(client: Client) -> None:
    payment = await b.record_payment(client)
    created = [
        (await b.create_refund(client, payment.payment_id, amount=100)).refund_id for _ in range(5)
    ]
    seen: list[str] = []
    token = ""
    for _ in range(5):
        page = await client.call(
            "t-reader",
            "ListRefunds",
            pb.ListRefundsRequest(payment_id=payment.payment_id, page_size=2, page_token=token),
        )
        seen += [r.refund_id for r in page.refunds]
        token = page.next_page_token
        if not token:
            break
    assert seen == created  # oldest first, each once
    # The token of this listing does not continue another one (it would skip rows).
    first = await client.call(
        "t-reader",
        "ListRefunds",
        pb.ListRefundsRequest(payment_id=payment.payment_id, page_size=2),
    )
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await client.call(
            "t-reader",
            "ListRefunds",
            pb.ListRefundsRequest(customer_id="cus_other", page_token=first.next_page_token),
        )
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in (other.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await client.call(
            "t-reader", "ListRefunds", pb.ListRefundsRequest(page_token="not-a-token")
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (bad.value.details() or "")
