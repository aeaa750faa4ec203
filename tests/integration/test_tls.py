"""The gRPC port over TLS and mutual TLS, with certificates made by the test: who can connect,
who is refused, and a client certificate's identity as the principal (seen as the audit
actor of the change it makes and in its permission checks)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from refundretry.v1 import refund_retry_service_pb2 as pb
from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from service.server import Service, start
from tests.certs import Authority, Issued, self_signed
from tests.integration import builders as b
from tests.integration.cli import cli_env, run_cli
from tests.integration.conftest import TOKENS, Client
from tests.integration.conftest import test_config as make_config

BILLING_URI = "spiffe://example.org/ns/billing/sa/billing-service"
TABLE = {
    **TOKENS,
    f"cert:{BILLING_URI}": {"principal": "billing-mtls", "roles": ["payment:record", "read"]},
    "cert:reporting-job": {"principal": "reporting-mtls", "roles": ["read"]},
}


class Pki:
    """The service's CA (server and trusted client certificates) and an unrelated CA."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = Authority("refund-retry test CA")
        self.other_ca = Authority("someone else's CA")
        self.server_cert, self.server_key = self.ca.issue("refund-retry", server=True).write(
            directory, "server"
        )
        self.ca_file = self.ca.write(directory, "ca")
        self.billing = self.ca.issue("billing", uris=(BILLING_URI,))
        self.reporting = self.ca.issue("reporting-job")  # mapped by its common name
        self.stranger = self.ca.issue("stranger", dns=("stranger.internal",))

    def settings(self, *, mutual: bool) -> dict[str, str]:
        settings = {
            "REFUND_RETRY_PLAINTEXT": "false",
            "REFUND_RETRY_TLS_CERT_FILE": str(self.server_cert),
            "REFUND_RETRY_TLS_KEY_FILE": str(self.server_key),
            "REFUND_RETRY_TOKENS": json.dumps(TABLE),
        }
        if mutual:
            settings["REFUND_RETRY_TLS_CLIENT_AUTH"] = "require"
            settings["REFUND_RETRY_TLS_CLIENT_CA_FILE"] = str(self.ca_file)
        return settings


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@contextlib.asynccontextmanager
async def serving(database_url: str, settings: dict[str, str]) -> AsyncIterator[Service]:
    service = await start(make_config(database_url, **settings), run_billing_loop=False)
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def tls_service(database_url: str, pki: Pki) -> AsyncIterator[Service]:
    async with serving(database_url, pki.settings(mutual=False)) as service:
        yield service


@pytest.fixture
async def mtls_service(database_url: str, pki: Pki) -> AsyncIterator[Service]:
    async with serving(database_url, pki.settings(mutual=True)) as service:
        yield service


@contextlib.asynccontextmanager
async def secure_client(
    service: Service, *, trust: Authority, certificate: Issued | None = None
) -> AsyncIterator[Client]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust.cert_pem,
        private_key=certificate.key_pem if certificate else None,
        certificate_chain=certificate.cert_pem if certificate else None,
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{service.port}", credentials) as channel:
        yield Client(pb_grpc.RefundRetryServiceStub(channel), service)


async def read_policy(client: Client, token: str | None = "t-reader") -> pb.GetRefundPolicyResponse:
    response: pb.GetRefundPolicyResponse = await client.call(
        token, "GetRefundPolicy", pb.GetRefundPolicyRequest()
    )
    return response


async def refused_code(client: Client, token: str | None = "t-reader") -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_policy(client, token)
    code: grpc.StatusCode = caught.value.code()
    return code


async def record_payment(client: Client, token: str | None) -> str:
    payment = b.payment_message()
    await client.call(
        token, "RecordPayment", pb.RecordPaymentRequest(request_id=b.request_id(), payment=payment)
    )
    return payment.payment_id


async def audit_actors(client: Client, payment_id: str) -> list[str]:
    response = await client.call(
        "t-reader",
        "ListAuditEvents",
        pb.ListAuditEventsRequest(entity_type="payment", entity_id=payment_id),
    )
    return [event.actor for event in response.audit_events]


# -- TLS --------------------------------------------------------------------------------------


async def test_a_client_trusting_the_ca_calls_over_tls(tls_service: Service, pki: Pki) -> None:
    async with secure_client(tls_service, trust=pki.ca) as client:
        assert (await read_policy(client)).policy.version == 0


async def test_a_plaintext_client_is_refused_by_a_tls_server(tls_service: Service) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_service.port}") as channel:
        client = Client(pb_grpc.RefundRetryServiceStub(channel), tls_service)
        assert await refused_code(client) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_server_is_refused(
    tls_service: Service, pki: Pki
) -> None:
    async with secure_client(tls_service, trust=pki.other_ca) as client:
        assert await refused_code(client) == grpc.StatusCode.UNAVAILABLE


async def test_without_client_verification_a_token_is_still_needed(
    tls_service: Service, pki: Pki
) -> None:
    """The server does not ask for client certificates, so one sent anyway proves nothing."""
    async with secure_client(tls_service, trust=pki.ca, certificate=pki.billing) as client:
        assert await refused_code(client, token=None) == grpc.StatusCode.UNAUTHENTICATED
        assert (await read_policy(client)).policy.version == 0


# -- mutual TLS -------------------------------------------------------------------------------


async def test_a_trusted_client_certificate_is_the_principal(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca, certificate=pki.billing) as client:
        payment_id = await record_payment(client, token=None)
        assert await audit_actors(client, payment_id) == ["billing-mtls"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.call(
                None,
                "UpdateRefundPolicy",
                pb.UpdateRefundPolicyRequest(request_id=b.request_id()),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "billing-mtls lacks the role 'admin'" in str(caught.value.details())


async def test_a_client_certificate_is_mapped_by_its_common_name(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca, certificate=pki.reporting) as client:
        assert (await read_policy(client, token=None)).policy.version == 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await record_payment(client, token=None)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "reporting-mtls" in str(caught.value.details())


async def test_a_bearer_token_wins_over_the_client_certificate(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca, certificate=pki.billing) as client:
        payment_id = await record_payment(client, token="t-admin")
        assert await audit_actors(client, payment_id) == ["admin@example.com"]
        # A bad token is refused; the certificate is no fallback.
        assert await refused_code(client, token="t-stolen") == grpc.StatusCode.UNAUTHENTICATED


async def test_a_trusted_certificate_without_an_entry_needs_a_token(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca, certificate=pki.stranger) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await read_policy(client, token=None)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "CN=stranger" in str(caught.value.details())
        assert (await read_policy(client, token="t-reader")).policy.version == 0


@pytest.mark.parametrize("issuer", ["self-signed", "other CA"])
async def test_an_untrusted_client_certificate_is_refused(
    mtls_service: Service, pki: Pki, issuer: str
) -> None:
    # The same names as the trusted billing certificate: only the issuer differs.
    certificate = (
        self_signed("billing", uris=(BILLING_URI,))
        if issuer == "self-signed"
        else pki.other_ca.issue("billing", uris=(BILLING_URI,))
    )
    async with secure_client(mtls_service, trust=pki.ca, certificate=certificate) as client:
        assert await refused_code(client, token="t-admin") == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca) as client:
        assert await refused_code(client, token="t-admin") == grpc.StatusCode.UNAVAILABLE


async def test_a_watch_stream_authenticates_by_client_certificate(
    mtls_service: Service, pki: Pki
) -> None:
    async with secure_client(mtls_service, trust=pki.ca, certificate=pki.reporting) as client:
        request = pb.WatchEventsRequest(until_caught_up=True)
        stream: Any = client.stub.WatchEvents(request, timeout=30)  # an aio stream
        assert [response async for response in stream] == []


# -- what the server says at start ------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "says", "level"),
    [
        ("plaintext", "over PLAINTEXT: no transport security", logging.WARNING),
        ("tls", "over TLS (certificate", logging.INFO),
        ("mutual", "over mutual TLS (certificate", logging.INFO),
    ],
)
async def test_the_start_log_line_says_how_grpc_is_served(
    database_url: str, pki: Pki, caplog: pytest.LogCaptureFixture, mode: str, says: str, level: int
) -> None:
    settings = {} if mode == "plaintext" else pki.settings(mutual=mode == "mutual")
    caplog.set_level(logging.INFO, logger="service.server")
    async with serving(database_url, settings) as service:
        (line,) = [r for r in caplog.records if getattr(r, "action", "") == "service.started"]
    assert f"127.0.0.1:{service.port} {says}" in line.getMessage()
    assert line.levelno == level
    assert getattr(line, "transport", "") == {"mutual": "mutual_tls"}.get(mode, mode)


async def test_serve_without_tls_or_plaintext_exits_2_with_one_line(database_url: str) -> None:
    env = cli_env(DATABASE_URL=database_url, GRPC_HOST="127.0.0.1", TOKENS=json.dumps(TOKENS))
    code, _, err = await run_cli(env, "serve")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert "REFUND_RETRY_TLS_CERT_FILE" in line
    assert "REFUND_RETRY_PLAINTEXT=true" in line


async def test_serve_with_a_key_of_another_certificate_exits_2_with_one_line(
    database_url: str, pki: Pki
) -> None:
    _, other_key = pki.ca.issue("refund-retry", server=True).write(pki.directory, "other")
    env = cli_env(
        DATABASE_URL=database_url,
        GRPC_HOST="127.0.0.1",
        TOKENS=json.dumps(TOKENS),
        TLS_CERT_FILE=str(pki.server_cert),
        TLS_KEY_FILE=str(other_key),
    )
    code, _, err = await run_cli(env, "serve")
    assert code == 2, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line == (
        f"refund-retry: configuration error: REFUND_RETRY_TLS_KEY_FILE {other_key} is not the "
        f"key of the certificate in REFUND_RETRY_TLS_CERT_FILE {pki.server_cert}"
    )
