"""The gRPC port's transport settings as an operator gets them wrong: every missing, unreadable,
malformed or mismatched file, and every contradiction, is one ``ConfigError`` naming the
setting and the file, raised before anything listens."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

from service.auth import TokenTable
from service.config import Config
from service.errors import ConfigError
from service.tls import Security, Transport, load
from tests.certs import Authority

TOKENS = TokenTable.parse('{"t": {"principal": "p", "roles": ["read"]}}', "tokens")


def transport(settings: Mapping[str, str], tokens: TokenTable = TOKENS) -> Transport:
    return load(Config.from_env({f"REFUND_RETRY_{k}": v for k, v in settings.items()}), tokens)


def refused(**settings: str) -> str:
    with pytest.raises(ConfigError) as caught:
        transport(settings)
    return caught.value.message


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority("Files Test CA")


@pytest.fixture
def files(tmp_path: Path, ca: Authority) -> dict[str, str]:
    """A valid server certificate and key, and the client CA, as settings."""
    cert, key = ca.issue("refund-retry", server=True).write(tmp_path, "server")
    return {
        "TLS_CERT_FILE": str(cert),
        "TLS_KEY_FILE": str(key),
        "CA": str(ca.write(tmp_path, "ca")),
    }


def tls(files: dict[str, str], **more: str) -> dict[str, str]:
    return {"TLS_CERT_FILE": files["TLS_CERT_FILE"], "TLS_KEY_FILE": files["TLS_KEY_FILE"], **more}


def test_valid_files_give_tls_and_mutual_tls(files: dict[str, str]) -> None:
    server = transport(tls(files))
    assert server.security is Security.TLS
    assert files["TLS_CERT_FILE"] in server.describe()
    mutual = transport(tls(files, TLS_CLIENT_AUTH="require", TLS_CLIENT_CA_FILE=files["CA"]))
    assert mutual.security is Security.MUTUAL_TLS
    assert "client certificates required" in mutual.describe()
    assert files["CA"] in mutual.describe()


def test_plaintext_only_when_configured_so() -> None:
    message = refused()
    assert "REFUND_RETRY_TLS_CERT_FILE" in message
    assert "REFUND_RETRY_PLAINTEXT=true" in message
    plain = transport({"PLAINTEXT": "true"})
    assert plain.security is Security.PLAINTEXT
    assert "PLAINTEXT" in plain.describe()


def test_plaintext_and_tls_settings_contradict(files: dict[str, str]) -> None:
    assert "contradicts REFUND_RETRY_TLS_CERT_FILE" in refused(**tls(files, PLAINTEXT="true"))
    assert "TLS_CLIENT_AUTH=require" in refused(PLAINTEXT="true", TLS_CLIENT_AUTH="require")


def test_a_certificate_needs_its_key_and_the_other_way_round(files: dict[str, str]) -> None:
    assert "TLS_KEY_FILE is not" in refused(TLS_CERT_FILE=files["TLS_CERT_FILE"])
    assert "TLS_CERT_FILE is not" in refused(TLS_KEY_FILE=files["TLS_KEY_FILE"])


def test_a_missing_or_unreadable_file_is_named(files: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.crt")
    message = refused(**tls(files, TLS_CERT_FILE=missing))
    assert message == f"cannot read REFUND_RETRY_TLS_CERT_FILE {missing}: No such file or directory"
    message = refused(**tls(files, TLS_KEY_FILE=str(tmp_path)))
    assert message == f"cannot read REFUND_RETRY_TLS_KEY_FILE {tmp_path}: Is a directory"


def test_a_file_without_a_certificate_is_refused(files: dict[str, str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_bytes(b"\x00\x01 not a certificate")
    assert "no PEM certificate" in refused(**tls(files, TLS_CERT_FILE=str(garbage)))
    # The key file given as the certificate: PEM, but no certificate in it.
    assert "no PEM certificate" in refused(**tls(files, TLS_CERT_FILE=files["TLS_KEY_FILE"]))


def test_a_corrupt_certificate_is_refused(files: dict[str, str], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.crt"
    corrupt.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    message = refused(**tls(files, TLS_CERT_FILE=str(corrupt)))
    assert message.startswith(f"REFUND_RETRY_TLS_CERT_FILE {corrupt}: not a valid PEM certificate")


def test_a_key_of_another_certificate_is_refused(
    files: dict[str, str], tmp_path: Path, ca: Authority
) -> None:
    _, other_key = ca.issue("someone-else", server=True).write(tmp_path, "other")
    message = refused(**tls(files, TLS_KEY_FILE=str(other_key)))
    assert message == (
        f"REFUND_RETRY_TLS_KEY_FILE {other_key} is not the key of the certificate in "
        f"REFUND_RETRY_TLS_CERT_FILE {files['TLS_CERT_FILE']}"
    )


def test_an_encrypted_or_absent_key_is_refused(
    files: dict[str, str], tmp_path: Path, ca: Authority
) -> None:
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(ca.issue("refund-retry", server=True).encrypted_key_pem(b"hunter2"))
    assert "the key is encrypted" in refused(**tls(files, TLS_KEY_FILE=str(encrypted)))
    assert "no PEM private key" in refused(**tls(files, TLS_KEY_FILE=files["TLS_CERT_FILE"]))


def test_client_verification_needs_a_usable_ca_file(files: dict[str, str], tmp_path: Path) -> None:
    message = refused(**tls(files, TLS_CLIENT_AUTH="require"))
    assert "TLS_CLIENT_AUTH=require needs REFUND_RETRY_TLS_CLIENT_CA_FILE" in message
    missing = str(tmp_path / "no-ca.crt")
    message = refused(**tls(files, TLS_CLIENT_AUTH="require", TLS_CLIENT_CA_FILE=missing))
    assert message.startswith(f"cannot read REFUND_RETRY_TLS_CLIENT_CA_FILE {missing}")
    message = refused(
        **tls(files, TLS_CLIENT_AUTH="require", TLS_CLIENT_CA_FILE=files["TLS_KEY_FILE"])
    )
    assert message.startswith("REFUND_RETRY_TLS_CLIENT_CA_FILE")
    # A CA without the mode would silently verify nothing: refused rather than ignored.
    message = refused(**tls(files, TLS_CLIENT_CA_FILE=files["CA"]))
    assert "TLS_CLIENT_AUTH is none" in message


def test_an_unknown_client_auth_mode_is_refused(files: dict[str, str]) -> None:
    assert "must be one of none, require" in refused(**tls(files, TLS_CLIENT_AUTH="optional"))


def test_a_key_file_readable_by_others_is_warned_about(
    files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    Path(files["TLS_KEY_FILE"]).chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="service.tls"):
        transport(tls(files))
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


def test_certificate_entries_unused_without_mutual_tls_are_warned_about(
    files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    tokens = TokenTable.parse('{"cert:billing": {"principal": "b", "roles": ["read"]}}', "t")
    with caplog.at_level(logging.WARNING, logger="service.tls"):
        transport(tls(files), tokens)
    (record,) = [r for r in caplog.records if "unused" in r.getMessage()]
    assert "billing" in record.getMessage()
