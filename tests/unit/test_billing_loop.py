"""``serve``'s billing loop runs the job again at once while a run found a full batch of work,
whether refund details or due payment retries: a backlog of retries after an outage is worked
off at the job's speed, not one batch per interval."""

from __future__ import annotations

import asyncio

import pytest

from service.jobs.billing_job import JobRequest, JobSummary
from service.jobs.retry_job import RetrySummary
from service.server import _billing_loop

BATCH = 10
INTERVAL = 3600  # a run after the interval would never come within the test


class Backlog:
    """A billing job whose runs find ``full`` full batches of one kind of work, then none."""

    def __init__(self, kind: str, full: int) -> None:
        self.kind, self.full, self.runs = kind, full, 0
        self.drained = asyncio.Event()

    async def run(self, request: JobRequest) -> JobSummary:
        self.runs += 1
        claimed = request.limit if self.runs <= self.full else 3
        if self.runs > self.full:
            self.drained.set()
        if self.kind == "refunds":
            return JobSummary(claimed=claimed)
        return JobSummary(payment_retries=RetrySummary(claimed=claimed))


@pytest.mark.parametrize("kind", ["refunds", "retries"])
async def test_a_full_batch_runs_the_job_again_at_once(kind: str) -> None:
    job = Backlog(kind, full=4)
    loop = asyncio.create_task(_billing_loop(job, INTERVAL, BATCH))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(job.drained.wait(), 10)
        await asyncio.sleep(0.05)  # a partial batch: no run until the interval
        assert job.runs == 5
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
