"""Settings from environment variables. A missing or malformed value stops start-up with one
line naming it (``ConfigError``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from service.auth import TokenTable
from service.errors import ConfigError

T = TypeVar("T")
PREFIX = "REFUND_RETRY_"

# name -> (default, description): the README's settings table is this table.
SETTINGS: dict[str, tuple[str, str]] = {
    "DATABASE_URL": (
        "postgresql://postgres@127.0.0.1:5432/refund_retry",
        "PostgreSQL URL; `migrate` creates the database when missing",
    ),
    "GRPC_HOST": ("0.0.0.0", "address the gRPC server binds"),  # noqa: S104
    "GRPC_PORT": ("50051", "gRPC port"),
    "TOKENS_FILE": ("", "JSON file of bearer tokens -> principal and roles (see README)"),
    "TOKENS": ("", "the same JSON inline, instead of TOKENS_FILE"),
    "DB_POOL_SIZE": ("16", "most database connections per process"),
    "BILLING_JOB_INTERVAL_SECONDS": ("5", "how often `serve` runs the billing job; 0 = never"),
    "BILLING_JOB_BATCH": ("500", "most refund details one billing job run takes"),
    "LEASE_SECONDS": ("60", "how long a worker holds claimed work before others may take it"),
    "PENDING_SYNC_SECONDS": ("60", "how often a refund pending at the gateway is synced"),
    "UNKNOWN_REPLAY_SECONDS": ("30", "delay before replaying an attempt with unknown outcome"),
    "VISA_MAX_REATTEMPTS": ("15", "Visa reattempts allowed per card in 30 days"),
    "STRIPE_API_KEY": ("", "Stripe secret key; the stripe gateway is enabled when set"),
    "STRIPE_API_BASE": ("", "Stripe API base URL (tests point it at a local server)"),
    "SHUTDOWN_GRACE_SECONDS": ("10", "how long SIGTERM waits for in-flight RPCs"),
    "LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR"),
    "LOG_FORMAT": ("json", "json (one object per line) or text"),
    "RABBITMQ_URL": ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL; its path is the vhost"),
    "CONSUMERS": ("true", "whether `serve` consumes the billing system's events (true or false)"),
    "BILLING_EXCHANGE": (
        "billing.events",
        "the billing system's topic exchange the consumers bind to (declared when missing)",
    ),
    "CONSUMER_QUEUE_PREFIX": (
        "refund-retry",
        "consumer queues are `<prefix>.payment.failed`, `.payment.succeeded`, "
        "`.subscription.cancelled`",
    ),
    "CONSUMER_PREFETCH": ("32", "unacknowledged messages per consumer queue, handled at once"),
    "CONSUMER_DELIVERY_LIMIT": (
        "20",
        "deliveries of a message that keeps failing before it is dead-lettered",
    ),
    "CONSUMER_RETRY_DELAY_MS": (
        "500",
        "wait before a message that failed transiently is redelivered; doubles, at most 30 s",
    ),
    "DEAD_LETTER_EXCHANGE": ("refund-retry.dead-letter", "exchange of rejected messages"),
    "DEAD_LETTER_QUEUE": ("refund-retry.dead-letter", "queue of rejected messages, with reasons"),
    "RELAY": ("true", "whether `serve` publishes the outbox to RabbitMQ (true or false)"),
    "EVENTS_EXCHANGE": (
        "refund-retry.events",
        "topic exchange the relay publishes this service's events to (declared when missing)",
    ),
    "RELAY_BATCH": (
        "500",
        "events the relay reads and publishes at a time; two batches await confirms at once",
    ),
    "WATCH_BUFFER": (
        "1000",
        "live events buffered per WatchEvents stream; a slower stream catches up from the table",
    ),
}


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _flag(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError("must be true or false")
    return text == "true"


def _amqp_url(text: str) -> str:
    if urlsplit(text).scheme not in ("amqp", "amqps"):
        raise ValueError("must be amqp://user:password@host:port/vhost")
    return text


def _amqp_name(text: str) -> str:
    """An exchange or queue name: AMQP allows up to 255 bytes; 'amq.' is the broker's."""
    if not text or len(text.encode()) > 200 or text.startswith("amq."):
        raise ValueError("must be 1-200 bytes and not start with 'amq.'")
    return text


def _postgres_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("postgres", "postgresql") or not parts.path.strip("/"):
        raise ValueError("must be postgresql://user@host:port/database")
    return text


def _http_url(text: str) -> str:
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise ValueError("must be an http(s) URL")
    return text


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str
    grpc_host: str
    grpc_port: int
    tokens: TokenTable | None
    db_pool_size: int
    billing_job_interval: int
    billing_job_batch: int
    lease_seconds: int
    pending_sync_seconds: int
    unknown_replay_seconds: int
    visa_max_reattempts: int
    stripe_api_key: str
    stripe_api_base: str
    shutdown_grace_seconds: int
    log_level: str
    log_format: str
    rabbitmq_url: str
    consumers: bool
    billing_exchange: str
    consumer_queue_prefix: str
    consumer_prefetch: int
    consumer_delivery_limit: int
    consumer_retry_delay_ms: int
    dead_letter_exchange: str
    dead_letter_queue: str
    relay: bool
    events_exchange: str
    relay_batch: int
    watch_buffer: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env

        def get(name: str, parse: Callable[[str], T]) -> T:
            key = PREFIX + name
            text = env.get(key, SETTINGS[name][0])
            try:
                return parse(text)
            except ValueError as exc:
                raise ConfigError(f"{key}={text!r} is malformed: {exc}") from exc

        tokens_file = get("TOKENS_FILE", str)
        inline = get("TOKENS", str)
        if tokens_file and inline:
            raise ConfigError(f"set only one of {PREFIX}TOKENS_FILE and {PREFIX}TOKENS")
        tokens = (
            TokenTable.from_file(Path(tokens_file))
            if tokens_file
            else TokenTable.parse(inline, PREFIX + "TOKENS")
            if inline
            else None
        )
        return cls(
            database_url=get("DATABASE_URL", _postgres_url),
            grpc_host=get("GRPC_HOST", str),
            grpc_port=get("GRPC_PORT", _int(0, 65535)),
            tokens=tokens,
            db_pool_size=get("DB_POOL_SIZE", _int(1, 500)),
            billing_job_interval=get("BILLING_JOB_INTERVAL_SECONDS", _int(0, 86400)),
            billing_job_batch=get("BILLING_JOB_BATCH", _int(1, 100_000)),
            lease_seconds=get("LEASE_SECONDS", _int(1, 86400)),
            pending_sync_seconds=get("PENDING_SYNC_SECONDS", _int(1, 86400)),
            unknown_replay_seconds=get("UNKNOWN_REPLAY_SECONDS", _int(1, 86400)),
            visa_max_reattempts=get("VISA_MAX_REATTEMPTS", _int(1, 100)),
            stripe_api_key=get("STRIPE_API_KEY", str),
            stripe_api_base=get("STRIPE_API_BASE", _http_url),
            shutdown_grace_seconds=get("SHUTDOWN_GRACE_SECONDS", _int(0, 3600)),
            log_level=get("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=get("LOG_FORMAT", _choice("json", "text")),
            rabbitmq_url=get("RABBITMQ_URL", _amqp_url),
            consumers=get("CONSUMERS", _flag),
            billing_exchange=get("BILLING_EXCHANGE", _amqp_name),
            consumer_queue_prefix=get("CONSUMER_QUEUE_PREFIX", _amqp_name),
            consumer_prefetch=get("CONSUMER_PREFETCH", _int(1, 10_000)),
            consumer_delivery_limit=get("CONSUMER_DELIVERY_LIMIT", _int(1, 1000)),
            consumer_retry_delay_ms=get("CONSUMER_RETRY_DELAY_MS", _int(0, 30_000)),
            dead_letter_exchange=get("DEAD_LETTER_EXCHANGE", _amqp_name),
            dead_letter_queue=get("DEAD_LETTER_QUEUE", _amqp_name),
            relay=get("RELAY", _flag),
            events_exchange=get("EVENTS_EXCHANGE", _amqp_name),
            relay_batch=get("RELAY_BATCH", _int(1, 10_000)),
            watch_buffer=get("WATCH_BUFFER", _int(10, 1_000_000)),
        )

    def require_tokens(self) -> TokenTable:
        if self.tokens is None:
            raise ConfigError(
                f"{PREFIX}TOKENS_FILE is not set: the service needs bearer tokens to "
                "authenticate callers (examples/dev-tokens.json has development ones)"
            )
        return self.tokens
