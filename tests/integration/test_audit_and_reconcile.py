"""The audit trail (append-only, hash-chained, tamper-evident) and reconciliation of ledger,
refunds and payments, through gRPC, the CLI and the database itself."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import asyncpg
import grpc
import pytest

from refundretry.v1 import audit_pb2, refund_pb2
from refundretry.v1 import refund_retry_service_pb2 as pb
from repository import journal
from repository.database import Database
from tests.integration import builders as b
from tests.integration import cli
from tests.integration.conftest import Client

RS = refund_pb2.RefundStatus


# -- helpers ----------------------------------------------------------------------------------


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run the real ``refund-retry`` console script against ``database_url``."""
    return await cli.run_cli(cli.cli_env(DATABASE_URL=database_url), *args)


async def list_audit(
    client: Client,
    *,
    entity_type: str = "",
    entity_id: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> pb.ListAuditEventsResponse:
    response: pb.ListAuditEventsResponse = await client.call(
        "t-reader",
        "ListAuditEvents",
        pb.ListAuditEventsRequest(
            entity_type=entity_type,
            entity_id=entity_id,
            page_size=page_size,
            page_token=page_token,
        ),
    )
    return response


async def all_audit(client: Client) -> list[audit_pb2.AuditEvent]:
    return list((await list_audit(client, page_size=1000)).audit_events)


async def verify(client: Client) -> pb.VerifyAuditChainResponse:
    response: pb.VerifyAuditChainResponse = await client.call(
        "t-reader", "VerifyAuditChain", pb.VerifyAuditChainRequest()
    )
    return response


async def reconcile(client: Client) -> pb.ReconcileResponse:
    response: pb.ReconcileResponse = await client.call(
        "t-reader", "Reconcile", pb.ReconcileRequest()
    )
    return response


async def refund_flow(client: Client) -> tuple[str, str]:
    """A payment refunded in full through approval and the billing job: (payment, refund)."""
    payment = await b.record_payment(client)
    refund = await b.create_refund(client, payment.payment_id)
    await b.approve(client, refund.refund_id)
    summary = await b.run_job(client)
    assert summary.refunds_succeeded == 1
    return payment.payment_id, refund.refund_id


async def as_superuser_without_triggers(db: Database, *statements: str) -> None:
    """Tamper like an attacker with superuser rights: triggers off, change, triggers on."""
    async with db.transaction() as conn:
        await conn.execute("ALTER TABLE audit_event DISABLE TRIGGER USER")
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("ALTER TABLE audit_event ENABLE TRIGGER USER")


async def audit_rows(db: Database) -> int:
    async with db.connection() as conn:
        count = await conn.fetchval("SELECT count(*) FROM audit_event")
    assert isinstance(count, int)
    return count


# -- the audit trail --------------------------------------------------------------------------


async def test_refund_flow_is_audited_in_order_with_actors(client: Client) -> None:
    _, refund_id = await refund_flow(client)
    events = list(
        (await list_audit(client, entity_type="refund", entity_id=refund_id)).audit_events
    )
    assert [(e.action, e.actor) for e in events] == [
        ("refund.created", "billing-service"),
        ("refund.approved", "alice@example.com"),
        ("refund.processing", "system:billing-job"),
        ("refund.succeeded", "system:billing-job"),
    ]
    assert all(e.entity_type == "refund" and e.entity_id == refund_id for e in events)
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    assert all(e.HasField("occur_time") for e in events)
    times = [e.occur_time.ToDatetime() for e in events]
    assert times == sorted(times)
    assert events[0].data["amount"] == 10000
    assert events[0].data["currency"] == "USD"


async def test_whole_trail_is_one_chain_from_sequence_1(client: Client) -> None:
    await refund_flow(client)
    events = await all_audit(client)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].previous_hash == "00" * 32
    for previous, event in itertools.pairwise(events):
        assert event.previous_hash == previous.hash
    assert len({e.hash for e in events}) == len(events)
    assert {e.entity_type for e in events} == {"payment", "refund"}


async def test_filters_by_entity(client: Client) -> None:
    payment_id, refund_id = await refund_flow(client)
    await refund_flow(client)
    payments = (await list_audit(client, entity_type="payment", page_size=100)).audit_events
    assert [e.action for e in payments] == ["payment.recorded", "payment.recorded"]
    one = (await list_audit(client, entity_type="payment", entity_id=payment_id)).audit_events
    assert [(e.action, e.entity_id) for e in one] == [("payment.recorded", payment_id)]
    assert len((await list_audit(client, entity_id=refund_id)).audit_events) == 4


async def test_paging_walks_every_event_once(client: Client) -> None:
    await refund_flow(client)
    await refund_flow(client)
    everything = await all_audit(client)
    assert len(everything) == 10
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = await list_audit(client, page_size=3, page_token=token)
        pages += 1
        assert 1 <= len(page.audit_events) <= 3
        seen += [e.sequence for e in page.audit_events]
        token = page.next_page_token
        if not token:
            break
        assert pages < 20, "paging does not end"
    assert seen == [e.sequence for e in everything]
    assert pages == 4

    first = await list_audit(client, entity_type="refund", page_size=2)
    second = await list_audit(
        client, entity_type="refund", page_size=2, page_token=first.next_page_token
    )
    assert [e.action for e in first.audit_events] == ["refund.created", "refund.approved"]
    assert [e.action for e in second.audit_events] == ["refund.processing", "refund.succeeded"]
    # That token continues only the listing of refunds: elsewhere it would skip events.
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await list_audit(client, entity_type="payment", page_token=first.next_page_token)
    assert other.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in (other.value.details() or "")


async def test_bad_page_token_and_page_size_are_invalid_argument(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_audit(client, page_token="not-a-token")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_audit(client, page_size=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (caught.value.details() or "")


async def test_intact_chain_checks_every_row(client: Client, db: Database) -> None:
    await refund_flow(client)
    await b.set_policy(client, auto={"USD": 100})
    report = await verify(client)
    assert report.intact
    assert report.first_broken_sequence == 0
    assert report.problem == ""
    assert report.rows_checked == await audit_rows(db) == 6


async def test_empty_chain_is_intact(client: Client) -> None:
    report = await verify(client)
    assert (report.intact, report.rows_checked, report.first_broken_sequence) == (True, 0, 0)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_event SET actor = 'mallory' WHERE sequence = 2",
        "DELETE FROM audit_event WHERE sequence = 2",
        "DELETE FROM audit_event",
        "TRUNCATE audit_event",
    ],
)
async def test_audit_event_refuses_update_delete_and_truncate(
    client: Client, db: Database, statement: str
) -> None:
    await refund_flow(client)
    before = await all_audit(client)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        async with db.connection() as conn:
            await conn.execute(statement)
    assert await all_audit(client) == before
    assert (await verify(client)).intact


async def test_changed_row_in_the_middle_is_detected(
    client: Client, db: Database, database_url: str
) -> None:
    await refund_flow(client)
    await refund_flow(client)
    rows = await audit_rows(db)
    middle = rows // 2
    await as_superuser_without_triggers(
        db,
        "UPDATE audit_event SET data = jsonb_set(data, '{amount}', '1') "
        f"WHERE sequence = {middle}",
    )
    report = await verify(client)
    assert not report.intact
    assert report.first_broken_sequence == middle
    assert "does not match its hash" in report.problem
    assert report.rows_checked == rows

    code, out, err = await run_cli(database_url, "verify-audit")
    assert code == 1, (out, err)
    assert f"sequence {middle}" in out
    assert "BROKEN" in out


async def test_rehashed_row_is_detected_at_the_next_link(client: Client, db: Database) -> None:
    """Rewriting a row together with its own hash breaks the link to the row after it."""
    await refund_flow(client)
    await as_superuser_without_triggers(
        db,
        "UPDATE audit_event SET actor = 'mallory', hash = audit_row_hash(previous_hash, "
        "sequence, occurred_at, 'mallory', action, entity_type, entity_id, data) "
        "WHERE sequence = 3",
    )
    report = await verify(client)
    assert not report.intact
    assert report.first_broken_sequence == 4


async def test_deleted_last_row_is_detected(
    client: Client, db: Database, database_url: str
) -> None:
    await refund_flow(client)
    rows = await audit_rows(db)
    await as_superuser_without_triggers(db, f"DELETE FROM audit_event WHERE sequence = {rows}")
    report = await verify(client)
    assert not report.intact
    assert report.first_broken_sequence == rows
    assert report.rows_checked == rows - 1
    code, out, _ = await run_cli(database_url, "verify-audit")
    assert code == 1
    assert f"sequence {rows}" in out


async def test_deleted_middle_row_is_detected(client: Client, db: Database) -> None:
    await refund_flow(client)
    await as_superuser_without_triggers(db, "DELETE FROM audit_event WHERE sequence = 2")
    report = await verify(client)
    assert not report.intact
    assert report.first_broken_sequence == 3
    assert "missing" in report.problem


async def test_cli_verify_audit_on_an_intact_chain(
    client: Client, db: Database, database_url: str
) -> None:
    await refund_flow(client)
    code, out, err = await run_cli(database_url, "verify-audit")
    assert code == 0, (out, err)
    assert f"intact: {await audit_rows(db)} rows" in out


async def test_new_rows_after_tampering_do_not_hide_it(client: Client, db: Database) -> None:
    await refund_flow(client)
    await as_superuser_without_triggers(
        db, "UPDATE audit_event SET entity_id = 'someone-else' WHERE sequence = 1"
    )
    await refund_flow(client)
    report = await verify(client)
    assert (report.intact, report.first_broken_sequence) == (False, 1)


async def test_concurrent_transactions_form_one_chain_each_in_one_run(
    client: Client, db: Database
) -> None:
    """Each transaction's rows are chained by one statement at its end: 12 transactions of 1-25
    rows at once give one intact chain with no gap, each transaction's rows together and in
    the order appended, a rolled-back transaction leaves nothing, and a row inserted alone
    (chained by the row trigger) joins the same chain."""

    async def write(tx: int) -> None:
        async with db.transaction() as conn:
            for i in range(1 + tx * 2):
                await journal.append_audit(
                    conn,
                    actor=f"actor-{tx}",
                    action="test.appended",
                    entity_type="test",
                    entity_id=f"tx-{tx}",
                    data={"i": i, "text": 'ü, "quoted", \\ and a tab\t', "amount_minor": 1999},
                )
            await asyncio.sleep(0)

    async def lost() -> None:
        async with db.transaction() as conn:
            await journal.append_audit(
                conn, actor="x", action="test.lost", entity_type="test", entity_id="lost", data={}
            )
            raise RuntimeError("rolled back")

    async def rolled_back() -> None:
        with pytest.raises(RuntimeError):
            await lost()

    await asyncio.gather(*(write(tx) for tx in range(12)), rolled_back())
    async with db.connection() as conn:
        await journal.append_audit(
            conn,
            actor="alone",
            action="test.alone",
            entity_type="test",
            entity_id="alone",
            data={"n": 1},
        )
        rows = await conn.fetch("SELECT sequence, entity_id, data FROM audit_event ORDER BY 1")
    assert [r["sequence"] for r in rows] == list(range(1, 12 * 12 + 2))
    assert rows[-1]["entity_id"] == "alone"
    runs = [
        (k, [r["data"]["i"] for r in g])
        for k, g in itertools.groupby(rows[:-1], key=lambda r: r["entity_id"])
    ]
    assert sorted(k for k, _ in runs) == sorted(f"tx-{tx}" for tx in range(12))
    assert all(items == list(range(len(items))) for _, items in runs)
    report = await verify(client)
    assert (report.intact, report.rows_checked) == (True, 145)


# -- reconciliation ---------------------------------------------------------------------------


async def mixed_refunds(client: Client) -> dict[str, Any]:
    """Full, partial, rejected, canceled, failed and still-pending refunds in USD, JPY and
    KWD; returns the payments by role."""
    usd_full = await b.record_payment(client, items=[("plan", 9000, 1000), ("addon", 500, 50)])
    usd_partial = await b.record_payment(client, items=[("plan", 20_000, 2000)])
    jpy_rejected = await b.record_payment(client, items=[("plan", 5000, 500)], currency="JPY")
    jpy_partial = await b.record_payment(client, items=[("plan", 3000, 300)], currency="JPY")
    kwd_canceled = await b.record_payment(client, items=[("plan", 12_345, 1_235)], currency="KWD")
    kwd_failed = await b.record_payment(
        client,
        items=[("plan", 7_000, 700)],
        currency="KWD",
        metadata={"sandbox_refund_outcome": "fail"},
    )
    kwd_pending = await b.record_payment(client, items=[("plan", 2_000, 0)], currency="KWD")

    full = await b.create_refund(client, usd_full.payment_id)
    partial = await b.create_refund(client, usd_partial.payment_id, amount=4321)
    rejected = await b.create_refund(client, jpy_rejected.payment_id, currency="JPY")
    jpy_part = await b.create_refund(client, jpy_partial.payment_id, amount=999, currency="JPY")
    canceled = await b.create_refund(client, kwd_canceled.payment_id, amount=5_000, currency="KWD")
    failed = await b.create_refund(client, kwd_failed.payment_id, currency="KWD")
    pending = await b.create_refund(client, kwd_pending.payment_id, amount=1_500, currency="KWD")

    for refund in (full, partial, jpy_part, failed):
        await b.approve(client, refund.refund_id)
    await client.call(
        "t-bob",
        "RejectRefund",
        pb.RejectRefundRequest(
            request_id=b.request_id(), refund_id=rejected.refund_id, reason="fraud"
        ),
    )
    await client.call(
        "t-billing",
        "CancelRefund",
        pb.CancelRefundRequest(
            request_id=b.request_id(), refund_id=canceled.refund_id, reason="duplicate"
        ),
    )
    summary = await b.run_job(client)
    assert summary.refunds_succeeded == 3
    assert summary.refunds_failed == 1

    statuses = {
        name: (await b.get_refund(client, r.refund_id)).status
        for name, r in [
            ("full", full),
            ("partial", partial),
            ("rejected", rejected),
            ("jpy_part", jpy_part),
            ("canceled", canceled),
            ("failed", failed),
            ("pending", pending),
        ]
    }
    assert statuses == {
        "full": RS.REFUND_STATUS_SUCCEEDED,
        "partial": RS.REFUND_STATUS_SUCCEEDED,
        "rejected": RS.REFUND_STATUS_REJECTED,
        "jpy_part": RS.REFUND_STATUS_SUCCEEDED,
        "canceled": RS.REFUND_STATUS_CANCELED,
        "failed": RS.REFUND_STATUS_FAILED,
        "pending": RS.REFUND_STATUS_PENDING_APPROVAL,
    }
    return {"usd_full": usd_full, "usd_partial": usd_partial, "kwd_failed": kwd_failed}


def totals_by_currency(report: pb.ReconcileResponse) -> dict[str, tuple[int, ...]]:
    return {
        t.currency_code: (
            t.captured.minor_units,
            t.refunded.minor_units,
            t.pending.minor_units,
            t.ledger_debits.minor_units,
            t.ledger_credits.minor_units,
        )
        for t in report.totals
    }


async def test_mixed_refunds_reconcile_with_totals_per_currency(
    client: Client, database_url: str
) -> None:
    await mixed_refunds(client)
    report = await reconcile(client)
    assert report.balanced, report.issues
    assert list(report.issues) == []
    usd_captured = 10_550 + 22_000
    usd_refunded = 10_550 + 4321
    jpy_captured = 5500 + 3300
    kwd_captured = 13_580 + 7_700 + 2_000
    # debits: clearing at capture + refunds and tax at refund; credits mirror them
    assert totals_by_currency(report) == {
        "JPY": (jpy_captured, 999, 0, jpy_captured + 999, jpy_captured + 999),
        "KWD": (kwd_captured, 0, 1_500, kwd_captured, kwd_captured),
        "USD": (
            usd_captured,
            usd_refunded,
            0,
            usd_captured + usd_refunded,
            usd_captured + usd_refunded,
        ),
    }
    for totals in report.totals:
        assert totals.captured.currency_code == totals.currency_code

    code, out, err = await run_cli(database_url, "reconcile")
    assert code == 0, (out, err)
    assert out.strip().splitlines()[-1] == "balanced"
    assert "KWD: captured 23280 refunded 0 pending 1500" in out


async def tamper_refunded_amount(db: Database, payment_id: str) -> None:
    async with db.connection() as conn:
        await conn.execute(
            "UPDATE payment SET refunded_amount = refunded_amount + 1 WHERE payment_id = $1",
            payment_id,
        )


async def test_tampered_payment_counter_is_reported_by_reconcile_rpc(
    client: Client, db: Database
) -> None:
    payments = await mixed_refunds(client)
    tampered = payments["usd_partial"].payment_id
    await tamper_refunded_amount(db, tampered)
    report = await reconcile(client)
    assert not report.balanced
    assert {i.entity_id for i in report.issues} == {tampered}
    checks = {i.check: i for i in report.issues}
    settled = checks["refunded equals settled refunds"]
    assert (settled.expected.minor_units, settled.actual.minor_units) == (4321, 4322)
    assert settled.expected.currency_code == "USD"
    assert "expected 4321, found 4322" in settled.message


async def test_tampered_payment_counter_fails_the_reconcile_cli(
    client: Client, db: Database, database_url: str
) -> None:
    payments = await mixed_refunds(client)
    tampered = payments["usd_partial"].payment_id
    await tamper_refunded_amount(db, tampered)
    code, out, err = await run_cli(database_url, "reconcile")
    assert code == 1, (out, err)
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH")]
    assert mismatches
    assert all(f"[{tampered}]" in line for line in mismatches)
    assert any(
        "refunded equals settled refunds" in line and "expected 4321 USD, found 4322" in line
        for line in mismatches
    )
    assert out.strip().splitlines()[-1] == f"{len(mismatches)} mismatches"


async def test_ledger_is_append_only(client: Client, db: Database) -> None:
    await refund_flow(client)
    for statement in (
        "DELETE FROM ledger_line",
        "UPDATE ledger_line SET debit = debit + 1 WHERE debit > 0",
        "DELETE FROM journal_entry",
        "TRUNCATE ledger_line",
    ):
        async with db.connection() as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)


async def test_deleted_ledger_line_is_reported(client: Client, db: Database) -> None:
    """Even a superuser who bypasses the append-only triggers is caught by Reconcile."""
    await refund_flow(client)
    async with db.transaction() as conn:
        await conn.execute("ALTER TABLE ledger_line DISABLE TRIGGER USER")
        await conn.execute(
            """DELETE FROM ledger_line l USING journal_entry j
                WHERE l.journal_id = j.journal_id AND j.kind = 'refund'
                  AND l.account = 'tax_payable'"""
        )
        await conn.execute("ALTER TABLE ledger_line ENABLE TRIGGER USER")
    report = await reconcile(client)
    assert not report.balanced
    assert "journal balances" in {i.check for i in report.issues}
    assert "ledger balances per currency" in {i.check for i in report.issues}


async def test_unbalanced_journal_is_refused_at_commit(client: Client, db: Database) -> None:
    payment = await b.record_payment(client)
    async with db.connection() as conn:
        before = await conn.fetchval("SELECT count(*) FROM journal_entry")
        transaction = conn.transaction()
        await transaction.start()
        try:
            journal_id = await conn.fetchval(
                """INSERT INTO journal_entry (kind, payment_id, currency)
                   VALUES ('refund', $1, 'USD') RETURNING journal_id""",
                payment.payment_id,
            )
            # accepted until commit: the balance trigger is deferred
            await conn.execute(
                """INSERT INTO ledger_line (journal_id, line_no, account, debit)
                   VALUES ($1, 1, 'refunds', 100)""",
                journal_id,
            )
            with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
                await transaction.commit()
        finally:
            if conn.is_in_transaction():
                await transaction.rollback()
        assert await conn.fetchval("SELECT count(*) FROM journal_entry") == before
    assert (await reconcile(client)).balanced


async def test_unbalancing_update_of_a_ledger_line_is_refused(client: Client, db: Database) -> None:
    await b.record_payment(client)
    async with db.connection() as conn:
        # Refused before it could unbalance anything: the ledger is append-only.
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="ledger_line is append-only"):
            async with conn.transaction():
                await conn.execute("UPDATE ledger_line SET debit = debit + 1 WHERE debit > 0")
    assert (await reconcile(client)).balanced


async def test_balanced_journal_insert_is_accepted(
    client: Client, db: Database, database_url: str
) -> None:
    payment = await b.record_payment(client)
    async with db.transaction() as conn:
        journal_id = await conn.fetchval(
            """INSERT INTO journal_entry (kind, payment_id, currency)
               VALUES ('refund', $1, 'USD') RETURNING journal_id""",
            payment.payment_id,
        )
        await conn.execute(
            """INSERT INTO ledger_line (journal_id, line_no, account, debit, credit)
               VALUES ($1, 1, 'refunds', 100, 0), ($1, 2, 'gateway_clearing:sandbox', 0, 100)""",
            journal_id,
        )
    async with db.connection() as conn:
        lines = await conn.fetchval(
            "SELECT count(*) FROM ledger_line WHERE journal_id = $1", journal_id
        )
    assert lines == 2
    # the ledger now shows a refund the payment does not: reconciliation names the payment
    code, out, _ = await run_cli(database_url, "reconcile")
    assert code == 1
    assert f"MISMATCH refunded equals ledger refunds [{payment.payment_id}]" in out
