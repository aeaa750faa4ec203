"""What a failed RabbitMQ connection means, in words an on-call engineer can act on."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

# aiormq's words when the broker answers Connection.Open with Connection.Close: RabbitMQ does
# that for a virtual host that does not exist or that the user may not use, and the error
# carries nothing more (not the broker's reply text).
_VHOST_REFUSED = ("Connection.OpenOk", "Connection.Close")


def connection_failure(exc: BaseException, url: str) -> str:
    """``exc`` (from connecting to ``url``) as one clause: the error's own words, or for a
    refused virtual host, which one and what to check."""
    text = str(exc)
    if all(words in text for words in _VHOST_REFUSED):
        parts = urlsplit(url)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username or "guest")
        return (
            f"RabbitMQ refused the virtual host {vhost!r}: it does not exist, or user "
            f"{user!r} has no permissions on it (rabbitmqctl list_vhosts, "
            f"rabbitmqctl list_user_permissions {user})"
        )
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
