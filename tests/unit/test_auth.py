"""Who a caller is: bearer tokens and client-certificate names in the token table, which one
wins, and secrets that stay out of error messages and the config's repr."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from service.auth import PeerCertificate, Role, TokenTable
from service.config import Config
from service.errors import ConfigError, Unauthenticated
from service.grpc.caller import peer_certificate

TABLE = {
    "tok-alice": {"principal": "alice@example.com", "roles": ["refund:create", "read"]},
    "sha256:" + hashlib.sha256(b"tok-ops").hexdigest(): {
        "principal": "ops@example.com",
        "roles": ["retry:manage"],
    },
    "cert:spiffe://example.org/billing": {
        "principal": "billing-service",
        "roles": ["payment:record", "read"],
    },
    "cert:reporting.internal": {"principal": "reporting", "roles": ["read"]},
    "cert:dashboard": {"principal": "dashboard", "roles": ["read"]},
}


def table(entries: dict[str, object] | None = None) -> TokenTable:
    return TokenTable.parse(json.dumps(entries or TABLE), "tokens.json")


def test_a_bearer_token_and_a_digest_entry_authenticate() -> None:
    assert table().authenticate("Bearer tok-alice").name == "alice@example.com"
    ops = table().authenticate("bearer  tok-ops ")
    assert ops.name == "ops@example.com"
    assert ops.roles == frozenset({Role.RETRY_MANAGE})


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dG9rLWFsaWNl", "must be 'Bearer <token>'"),
        ("Bearer ", "must be 'Bearer <token>'"),
        ("Bearer tok-mallory", "unknown bearer token"),
        ("Bearer cert:dashboard", "unknown bearer token"),  # a certificate name is no token
    ],
)
def test_a_bad_authorization_is_unauthenticated(authorization: str | None, message: str) -> None:
    with pytest.raises(Unauthenticated, match=message):
        table().authenticate(authorization)


def test_a_verified_certificate_without_a_token_is_the_principal_by_san_uri_dns_or_cn() -> None:
    by_uri = PeerCertificate("anything", ("spiffe://example.org/billing",))
    assert table().identify(None, by_uri).name == "billing-service"
    by_dns = PeerCertificate(None, ("reporting.internal",))
    assert table().identify(None, by_dns).name == "reporting"
    by_cn = PeerCertificate("dashboard", ("unmapped.internal",))
    assert table().identify(None, by_cn).name == "dashboard"


def test_a_token_wins_over_the_certificate_and_must_be_valid() -> None:
    billing = PeerCertificate("billing", ("spiffe://example.org/billing",))
    assert table().identify("Bearer tok-alice", billing).name == "alice@example.com"
    with pytest.raises(Unauthenticated, match="unknown bearer token"):
        table().identify("Bearer tok-mallory", billing)  # no fallback to the certificate


def test_a_certificate_without_an_entry_is_unauthenticated_naming_it() -> None:
    stranger = PeerCertificate("stranger", ("spiffe://example.org/stranger",))
    with pytest.raises(Unauthenticated) as caught:
        table().identify(None, stranger)
    assert "CN=stranger" in caught.value.message
    assert "spiffe://example.org/stranger" in caught.value.message


def test_a_certificate_matching_entries_of_two_principals_is_refused() -> None:
    both = PeerCertificate("dashboard", ("reporting.internal",))
    with pytest.raises(Unauthenticated, match="several principals"):
        table().identify(None, both)


def test_no_token_and_no_certificate_is_unauthenticated() -> None:
    with pytest.raises(Unauthenticated, match="missing"):
        table().identify(None, None)


def test_a_table_of_certificate_entries_only_is_valid() -> None:
    only = table({"cert:dashboard": {"principal": "dashboard", "roles": ["read"]}})
    assert only.certificate_names == frozenset({"dashboard"})
    with pytest.raises(Unauthenticated):
        only.authenticate("Bearer dashboard")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("cert:", "needs a certificate name"),
        ("cert: padded", "without surrounding spaces"),
        ("sha256:abc", "64 hex digits"),
        ("sha256:" + "zz" * 32, "64 hex digits"),
    ],
)
def test_malformed_keys_are_refused_at_start(key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        table({key: {"principal": "p", "roles": ["read"]}})


# -- what gRPC reports about the connection ---------------------------------------------------


def test_the_peer_certificate_comes_only_from_a_tls_connection() -> None:
    verified = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"billing"],
        "x509_subject_alternative_name": [b"spiffe://example.org/billing", b"billing.internal"],
    }
    assert peer_certificate(verified) == PeerCertificate(
        "billing", ("spiffe://example.org/billing", "billing.internal")
    )
    assert peer_certificate({"transport_security_type": [b"ssl"]}) is None  # no certificate
    assert peer_certificate({**verified, "transport_security_type": [b"insecure"]}) is None
    assert peer_certificate({}) is None


# -- secrets: from files, never echoed --------------------------------------------------------

STRIPE_KEY = "sk_test_5ecre7_do_not_print"
AMQP_PASSWORD = "amqp-5ecre7"


def test_the_config_repr_hides_keys_and_url_passwords() -> None:
    config = Config.from_env(
        {
            "REFUND_RETRY_STRIPE_API_KEY": STRIPE_KEY,
            "REFUND_RETRY_RABBITMQ_URL": f"amqp://refunds:{AMQP_PASSWORD}@mq.internal:5672/billing",
            "REFUND_RETRY_DATABASE_URL": "postgresql://refunds:pg-5ecre7@db.internal/refund_retry",
        }
    )
    shown = repr(config)
    assert STRIPE_KEY not in shown
    assert AMQP_PASSWORD not in shown
    assert "pg-5ecre7" not in shown
    assert "mq.internal" in shown  # the rest stays readable
    assert config.stripe_api_key == STRIPE_KEY


def test_a_malformed_url_is_reported_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"REFUND_RETRY_RABBITMQ_URL": f"http://refunds:{AMQP_PASSWORD}@mq/"})
    assert "REFUND_RETRY_RABBITMQ_URL" in caught.value.message
    assert AMQP_PASSWORD not in caught.value.message


def test_secrets_can_come_from_files(tmp_path: Path) -> None:
    key_file = tmp_path / "stripe-key"
    key_file.write_text(STRIPE_KEY + "\n")
    url_file = tmp_path / "amqp-url"
    url_file.write_text(f"amqp://refunds:{AMQP_PASSWORD}@mq.internal/\n")
    config = Config.from_env(
        {
            "REFUND_RETRY_STRIPE_API_KEY_FILE": str(key_file),
            "REFUND_RETRY_RABBITMQ_URL_FILE": str(url_file),
        }
    )
    assert config.stripe_api_key == STRIPE_KEY
    assert config.rabbitmq_url == f"amqp://refunds:{AMQP_PASSWORD}@mq.internal/"


def test_a_secret_file_must_be_readable_and_alone(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(ConfigError, match="cannot read REFUND_RETRY_STRIPE_API_KEY_FILE"):
        Config.from_env({"REFUND_RETRY_STRIPE_API_KEY_FILE": str(missing)})
    key_file = tmp_path / "stripe-key"
    key_file.write_text(STRIPE_KEY)
    with pytest.raises(ConfigError, match="set only one of"):
        Config.from_env(
            {
                "REFUND_RETRY_STRIPE_API_KEY": STRIPE_KEY,
                "REFUND_RETRY_STRIPE_API_KEY_FILE": str(key_file),
            }
        )


def test_a_malformed_secret_file_is_reported_without_its_content(tmp_path: Path) -> None:
    url_file = tmp_path / "amqp-url"
    url_file.write_text(f"http://refunds:{AMQP_PASSWORD}@mq/")
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"REFUND_RETRY_RABBITMQ_URL_FILE": str(url_file)})
    assert str(url_file) in caught.value.message
    assert AMQP_PASSWORD not in caught.value.message
