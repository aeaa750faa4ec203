"""Page tokens: opaque, bound to the listing's filters, and the first format still read."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from service import validation
from service.errors import InvalidArgument

WHEN = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
ID = uuid.UUID("6f1c1f0e-4a8e-4f7e-9a57-3b8f0b3c2d11")


def test_a_token_continues_its_own_listing() -> None:
    token = validation.keyset_token(WHEN, ID, ("ACTIVE", "cus_1", None))
    assert validation.keyset_after(token, ("ACTIVE", "cus_1", None)) == (WHEN, ID)
    assert validation.keyset_after(token, ("ACTIVE", "cus_1", "")) == (WHEN, ID)  # "" = None


@pytest.mark.parametrize("filters", [("ACTIVE", "cus_2", None), ("PAUSED", "cus_1", None), ()])
def test_a_token_does_not_continue_a_listing_with_other_filters(filters: tuple[object]) -> None:
    token = validation.keyset_token(WHEN, ID, ("ACTIVE", "cus_1", None))
    with pytest.raises(InvalidArgument) as caught:
        validation.keyset_after(token, filters)
    assert caught.value.field == "page_token"
    assert "other filters" in str(caught.value)


def test_tokens_of_the_first_format_still_continue() -> None:
    old = base64.urlsafe_b64encode(f"{WHEN.isoformat()}|{ID}".encode()).decode()
    assert validation.keyset_after(old, ("anything",)) == (WHEN, ID)


@pytest.mark.parametrize("token", ["not-a-token", "%%%", base64.b64encode(b"v2:x:y|z").decode()])
def test_a_token_this_service_did_not_return_is_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.keyset_after(token, ())
    assert caught.value.field == "page_token"
