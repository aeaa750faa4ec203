"""RunBillingJob's answer carries every count the run kept: on-call reads it with grpcurl, and a
count the job keeps but the answer drops (a lease lost, a lease renewed) is invisible there."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta

from google.protobuf.message import Message

from service.grpc.servicer import billing_job_summary
from service.jobs.billing_job import JobSummary
from service.jobs.retry_job import RetrySummary


def _ints(message: Message, prefix: str = "") -> dict[str, int]:
    """Every integer field of ``message`` that is set, by its path."""
    out: dict[str, int] = {}
    for field, value in message.ListFields():
        if isinstance(value, Message):
            out.update(_ints(value, f"{prefix}{field.name}."))
        elif isinstance(value, int):
            out[f"{prefix}{field.name}"] = value
    return out


def test_every_count_of_a_run_reaches_the_answer_under_its_own_field() -> None:
    retries = RetrySummary()
    summary = JobSummary(elapsed=timedelta(seconds=3), payment_retries=retries)
    counts = [f.name for f in fields(JobSummary) if f.type in ("int", int)]
    retry_counts = [f.name for f in fields(RetrySummary) if f.type in ("int", int)]
    # Distinct values, so a count sent under another count's field shows too.
    for value, name in enumerate(counts, start=1):
        setattr(summary, name, value)
    for value, name in enumerate(retry_counts, start=101):
        setattr(retries, name, value)

    answer = _ints(billing_job_summary(summary))

    assert sorted(
        v for k, v in answer.items() if not k.startswith(("payment_retries.", "elapsed."))
    ) == list(range(1, len(counts) + 1))
    assert sorted(v for k, v in answer.items() if k.startswith("payment_retries.")) == list(
        range(101, 101 + len(retry_counts))
    )
    assert answer["elapsed.seconds"] == 3


def test_the_answer_names_the_counts_as_on_call_reads_them() -> None:
    summary = JobSummary(
        lease_lost=2,
        not_attempted=3,
        payment_retries=RetrySummary(lease_lost=4, leases_renewed=5, card_busy=6),
    )

    answer = billing_job_summary(summary)

    assert (answer.refunds_lease_lost, answer.refunds_not_attempted) == (2, 3)
    retries = answer.payment_retries
    assert (retries.lease_lost, retries.leases_renewed, retries.card_busy) == (4, 5, 6)
