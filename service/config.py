"""Settings from environment variables. A missing or malformed value stops start-up with one
line naming it (``ConfigError``)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from service.auth import TokenTable
from service.errors import ConfigError
from service.gateways.adyen_notifications import parse_hmac_keys

T = TypeVar("T")
PREFIX = "REFUND_RETRY_"

# name -> (default, description): the README's settings table is this table.
SETTINGS: dict[str, tuple[str, str]] = {
    "DATABASE_URL": (
        "postgresql://postgres@127.0.0.1:5432/refund_retry",
        "PostgreSQL URL; `migrate` creates the database when missing",
    ),
    "EMBEDDED_POSTGRES": (
        "auto",
        "auto: when DATABASE_URL is not set and nothing answers at its default address, "
        "`serve` and `migrate` start an embedded PostgreSQL (see First run); always: the "
        "embedded one, with DATABASE_URL not set; never",
    ),
    "EMBEDDED_POSTGRES_DIR": (
        "",
        "data directory of the embedded PostgreSQL, kept across runs (default "
        "`$XDG_DATA_HOME/refund-retry/postgres`, else `~/.local/share/refund-retry/postgres`; "
        "for root `/var/lib/refund-retry/postgres`)",
    ),
    "GRPC_HOST": ("0.0.0.0", "address the gRPC server binds"),  # noqa: S104
    "GRPC_PORT": ("50051", "gRPC port"),
    "HTTP_HOST": ("0.0.0.0", "address the HTTP server (webhooks, probes) binds"),  # noqa: S104
    "HTTP_PORT": ("8080", "HTTP port: `/webhooks/*`, `/healthz`, `/readyz`, `/metrics`"),
    "TOKENS_FILE": ("", "JSON file of bearer tokens -> principal and roles (see README)"),
    "TOKENS": ("", "the same JSON inline, instead of TOKENS_FILE"),
    "TLS_CERT_FILE": (
        "",
        "PEM certificate chain the gRPC port presents; with TLS_KEY_FILE it turns TLS on",
    ),
    "TLS_KEY_FILE": ("", "PEM private key of TLS_CERT_FILE (not encrypted)"),
    "TLS_CLIENT_AUTH": (
        "none",
        "none, or require: every client presents a certificate from TLS_CLIENT_CA_FILE "
        "(mutual TLS)",
    ),
    "TLS_CLIENT_CA_FILE": ("", "PEM CA certificates that client certificates must chain to"),
    "PLAINTEXT": (
        "false",
        "true serves gRPC without TLS: for development, or behind a proxy that terminates TLS; "
        "needed when TLS_CERT_FILE is not set",
    ),
    "DB_POOL_SIZE": ("16", "most database connections per process"),
    "BILLING_JOB_INTERVAL_SECONDS": ("5", "how often `serve` runs the billing job; 0 = never"),
    "BILLING_JOB_BATCH": ("500", "most refund details one billing job run takes"),
    "RETRY_CHUNK": (
        "500",
        "payment retries the billing job opens, charges and records together (one transaction "
        "each side); a worker holds one database lock per card of the chunk it is opening. "
        "A chunk's outcomes are recorded when its last charge (16 at a time) has answered: "
        "smaller with a slow gateway, so that outcomes are not held back long",
    ),
    "LEASE_SECONDS": (
        "60",
        "how long a worker holds claimed work before others may take it; a chunk of payment "
        "retries still charging renews its leases every third of this",
    ),
    "PENDING_SYNC_SECONDS": ("60", "how often a refund pending at the gateway is synced"),
    "REFUND_NOTIFICATION_TIMEOUT_SECONDS": (
        "172800",
        "how long a refund at a gateway that cannot be asked about it (Adyen) waits for its "
        "outcome notification after the attempt started; then it is REQUIRES_ACTION "
        "(`notification_overdue`) for an operator, and a late notification still settles it",
    ),
    "UNKNOWN_REPLAY_SECONDS": (
        "30",
        "delay before replaying an attempt with unknown outcome, or a refund attempt that never "
        "reached the gateway",
    ),
    "VISA_MAX_REATTEMPTS": ("15", "Visa reattempts allowed per card in 30 days"),
    "STRIPE_API_KEY": ("", "Stripe secret key; the stripe gateway is enabled when set"),
    "STRIPE_API_KEY_FILE": ("", "file holding the Stripe secret key, instead of STRIPE_API_KEY"),
    "STRIPE_API_BASE": ("", "Stripe API base URL (tests point it at a local server)"),
    "ADYEN_API_KEY": ("", "Adyen API key (X-API-Key); the adyen gateway is enabled when set"),
    "ADYEN_API_KEY_FILE": ("", "file holding the Adyen API key, instead of ADYEN_API_KEY"),
    "ADYEN_MERCHANT_ACCOUNT": (
        "",
        "the Adyen merchant account refunds and charges are made for; needed with ADYEN_API_KEY",
    ),
    "ADYEN_ENVIRONMENT": ("test", "test or live: which of Adyen's endpoints the SDK calls"),
    "ADYEN_LIVE_URL_PREFIX": (
        "",
        "the live endpoint prefix from the Customer Area (Developers > API URLs); needed for live",
    ),
    "ADYEN_API_BASE": (
        "",
        "Adyen Checkout API base URL instead of the test or live endpoint (tests point it at a "
        "local server)",
    ),
    "ADYEN_RECURRING_PROCESSING_MODEL": (
        "Subscription",
        "how payment retries charge a stored card: Subscription or UnscheduledCardOnFile",
    ),
    "STRIPE_WEBHOOK_SECRET": (
        "",
        "signing secret of the Stripe webhook endpoint (`whsec_...`); without it Stripe "
        "webhooks are refused",
    ),
    "STRIPE_WEBHOOK_SECRET_FILE": (
        "",
        "file holding the Stripe webhook signing secret, instead of STRIPE_WEBHOOK_SECRET",
    ),
    "ADYEN_WEBHOOK_HMAC_KEYS": (
        "",
        "HMAC key of the Adyen webhook (hex), or several separated by commas while Adyen switches "
        "to a new one; without it Adyen webhooks are refused",
    ),
    "ADYEN_WEBHOOK_HMAC_KEYS_FILE": (
        "",
        "file holding the Adyen webhook HMAC keys, instead of ADYEN_WEBHOOK_HMAC_KEYS",
    ),
    "ADYEN_WEBHOOK_USERNAME": (
        "",
        "basic-auth user Adyen sends with webhooks; when set, webhooks without it are refused",
    ),
    "ADYEN_WEBHOOK_PASSWORD": ("", "basic-auth password Adyen sends with webhooks"),
    "ADYEN_WEBHOOK_PASSWORD_FILE": (
        "",
        "file holding the Adyen webhook password, instead of ADYEN_WEBHOOK_PASSWORD",
    ),
    "BREAKER_FAILURES": (
        "5",
        "consecutive transient failures (unreachable, timeouts, 5xx) that open a gateway's "
        "circuit breaker",
    ),
    "BREAKER_COOLDOWN_SECONDS": (
        "30",
        "how long an open circuit breaker refuses calls to its gateway before one goes through",
    ),
    "SHUTDOWN_GRACE_SECONDS": ("10", "how long SIGTERM waits for in-flight RPCs"),
    "LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR"),
    "LOG_FORMAT": ("json", "json (one object per line) or text"),
    "RABBITMQ_URL": ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL; its path is the vhost"),
    "RABBITMQ_URL_FILE": (
        "",
        "file holding the RabbitMQ URL (it carries the password), instead of RABBITMQ_URL",
    ),
    "ROLES": (
        "grpc,http,consumers,relay,scheduler",
        "what this `serve` process does (`serve --roles` sets it), to split the work over "
        "replicas: grpc (the API), http (webhooks, dashboard, metrics, probes), consumers, relay "
        "(the outbox to RabbitMQ), scheduler (the billing job and the analytics roll-up)",
    ),
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
    "OUTBOX_RETENTION_DAYS": (
        "7",
        "published events older than this are deleted from the outbox (by the scheduler role, "
        "every 10 min); WatchEvents refuses a cursor older than what was deleted; 0 keeps them "
        "for ever",
    ),
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
    "ANALYTICS_TIME_ZONES": (
        "UTC",
        "comma-separated IANA zones whose local days GetRecoveryMetrics can report; a zone "
        "added is backfilled by the next roll-up, one removed is dropped",
    ),
    "ANALYTICS_ROLLUP_SECONDS": (
        "10",
        "how often `serve` folds new changes into the analytics roll-ups; 0 = never on this "
        "replica (one replica must, or the change logs only grow)",
    ),
}

# Secrets: each can also be read from the file its ``<NAME>_FILE`` setting names (a mounted
# secret), and none is ever echoed in an error message or in ``repr(Config)``.
SECRETS = frozenset(
    {
        "ADYEN_API_KEY",
        "STRIPE_API_KEY",
        "RABBITMQ_URL",
        "STRIPE_WEBHOOK_SECRET",
        "ADYEN_WEBHOOK_HMAC_KEYS",
        "ADYEN_WEBHOOK_PASSWORD",
    }
)
_SECRET_FIELD = re.compile(r"key|secret|password|token")


def _without_password(text: str) -> str:
    """A URL with its password replaced by ``***``; other text unchanged."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return "(hidden)" if "@" in text else text
    if not password:
        return text
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _shown(name: str, text: str) -> str:
    """How a setting's value may appear in an error message: hidden when the setting is a
    secret or is named like one (a key, secret, password or token); a URL without its
    password."""
    named_secret = _SECRET_FIELD.search(name.lower()) and not name.endswith("_FILE")
    if named_secret or (name in SECRETS and "://" not in text):
        return "(hidden)"
    return _without_password(text)


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


ROLES = ("grpc", "http", "consumers", "relay", "scheduler")


def _roles(text: str) -> frozenset[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {', '.join(unknown)}; the roles are {', '.join(ROLES)}")
    if not names:
        raise ValueError(f"must name at least one of {', '.join(ROLES)}")
    return frozenset(names)


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


def _time_zones(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names or len(names) > 20:
        raise ValueError("must name 1-20 IANA time zones, e.g. UTC,Europe/Berlin")
    for name in names:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{name!r} is not an IANA time zone") from None
    return names


def _http_url(text: str) -> str:
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise ValueError("must be an http(s) URL")
    return text


def _hmac_keys(text: str) -> str:
    """Adyen HMAC keys: hex, comma-separated; kept as text (a string is hidden in the repr)."""
    parse_hmac_keys(text)
    return text


def _default_data_dir(env: Mapping[str, str]) -> str:
    """Where the embedded PostgreSQL keeps its data unless told: the XDG base directory
    specification's data home (``$XDG_DATA_HOME``, used only when absolute, else
    ``~/.local/share``); for root without ``XDG_DATA_HOME``, ``/var/lib``: run as root,
    embedded-postgres makes every directory above the data directory traversable by its
    server's user, which must not open up root's home."""
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        base = Path(xdg)
    elif os.geteuid() == 0:
        base = Path("/var/lib")
    else:
        base = Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return str(base / "refund-retry" / "postgres")


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str
    grpc_host: str
    grpc_port: int
    tokens: TokenTable | None
    tls_cert_file: str
    tls_key_file: str
    tls_client_auth: str
    tls_client_ca_file: str
    plaintext: bool
    db_pool_size: int
    billing_job_interval: int
    billing_job_batch: int
    retry_chunk: int
    lease_seconds: int
    pending_sync_seconds: int
    refund_notification_timeout_seconds: int
    unknown_replay_seconds: int
    visa_max_reattempts: int
    stripe_api_key: str
    stripe_api_base: str
    adyen_api_key: str
    adyen_merchant_account: str
    adyen_environment: str
    adyen_live_url_prefix: str
    adyen_api_base: str
    adyen_recurring_processing_model: str
    shutdown_grace_seconds: int
    log_level: str
    log_format: str
    rabbitmq_url: str
    roles: frozenset[str]  # what serve runs: a subset of ROLES
    consumers: bool
    billing_exchange: str
    consumer_queue_prefix: str
    consumer_prefetch: int
    consumer_delivery_limit: int
    consumer_retry_delay_ms: int
    dead_letter_exchange: str
    dead_letter_queue: str
    outbox_retention_days: int  # 0: keep published events for ever
    relay: bool
    events_exchange: str
    relay_batch: int
    watch_buffer: int
    analytics_time_zones: tuple[str, ...]
    analytics_rollup_seconds: int
    http_host: str
    http_port: int
    stripe_webhook_secret: str
    adyen_webhook_hmac_keys: str  # validated hex; read with adyen_notifications.parse_hmac_keys
    adyen_webhook_username: str
    adyen_webhook_password: str
    breaker_failures: int
    breaker_cooldown_seconds: int
    embedded_postgres: str  # auto, always or never (service/embedded_db.py)
    embedded_postgres_dir: str  # absolute; the default resolved from XDG_DATA_HOME or HOME
    database_url_given: bool  # DATABASE_URL was set: never replaced by an embedded database

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env

        def get(name: str, parse: Callable[[str], T]) -> T:
            key = PREFIX + name
            text = env.get(key, SETTINGS[name][0])
            try:
                return parse(text)
            except ValueError as exc:
                raise ConfigError(f"{key}={_shown(name, text)!r} is malformed: {exc}") from exc

        def secret(name: str, parse: Callable[[str], T]) -> T:
            """``name`` from its variable, or from the file ``<name>_FILE`` names."""
            path = get(name + "_FILE", str)
            if not path:
                return get(name, parse)
            file_key = f"{PREFIX}{name}_FILE"
            if PREFIX + name in env:
                raise ConfigError(f"set only one of {PREFIX}{name} and {file_key}")
            try:
                text = Path(path).read_text("utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(f"cannot read {file_key} {path}: {reason}") from exc
            try:
                return parse(text)
            except ValueError as exc:
                raise ConfigError(f"{file_key} {path}: the value is malformed: {exc}") from exc

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
        webhook_user = get("ADYEN_WEBHOOK_USERNAME", str)
        webhook_password = secret("ADYEN_WEBHOOK_PASSWORD", str)
        if bool(webhook_user) != bool(webhook_password):
            raise ConfigError(
                f"set both {PREFIX}ADYEN_WEBHOOK_USERNAME and {PREFIX}ADYEN_WEBHOOK_PASSWORD "
                "(or _FILE), or neither"
            )
        return cls(
            database_url=get("DATABASE_URL", _postgres_url),
            grpc_host=get("GRPC_HOST", str),
            grpc_port=get("GRPC_PORT", _int(0, 65535)),
            tokens=tokens,
            tls_cert_file=get("TLS_CERT_FILE", str),
            tls_key_file=get("TLS_KEY_FILE", str),
            tls_client_auth=get("TLS_CLIENT_AUTH", _choice("none", "require")),
            tls_client_ca_file=get("TLS_CLIENT_CA_FILE", str),
            plaintext=get("PLAINTEXT", _flag),
            db_pool_size=get("DB_POOL_SIZE", _int(1, 500)),
            billing_job_interval=get("BILLING_JOB_INTERVAL_SECONDS", _int(0, 86400)),
            billing_job_batch=get("BILLING_JOB_BATCH", _int(1, 100_000)),
            retry_chunk=get("RETRY_CHUNK", _int(1, 5_000)),
            lease_seconds=get("LEASE_SECONDS", _int(1, 86400)),
            pending_sync_seconds=get("PENDING_SYNC_SECONDS", _int(1, 86400)),
            refund_notification_timeout_seconds=get(
                "REFUND_NOTIFICATION_TIMEOUT_SECONDS", _int(60, 30 * 86400)
            ),
            unknown_replay_seconds=get("UNKNOWN_REPLAY_SECONDS", _int(1, 86400)),
            visa_max_reattempts=get("VISA_MAX_REATTEMPTS", _int(1, 100)),
            stripe_api_key=secret("STRIPE_API_KEY", str),
            stripe_api_base=get("STRIPE_API_BASE", _http_url),
            adyen_api_key=secret("ADYEN_API_KEY", str),
            adyen_merchant_account=get("ADYEN_MERCHANT_ACCOUNT", str),
            adyen_environment=get("ADYEN_ENVIRONMENT", _choice("test", "live")),
            adyen_live_url_prefix=get("ADYEN_LIVE_URL_PREFIX", str),
            adyen_api_base=get("ADYEN_API_BASE", _http_url),
            adyen_recurring_processing_model=get(
                "ADYEN_RECURRING_PROCESSING_MODEL", _choice("Subscription", "UnscheduledCardOnFile")
            ),
            shutdown_grace_seconds=get("SHUTDOWN_GRACE_SECONDS", _int(0, 3600)),
            log_level=get("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=get("LOG_FORMAT", _choice("json", "text")),
            rabbitmq_url=secret("RABBITMQ_URL", _amqp_url),
            roles=get("ROLES", _roles),
            consumers=get("CONSUMERS", _flag),
            billing_exchange=get("BILLING_EXCHANGE", _amqp_name),
            consumer_queue_prefix=get("CONSUMER_QUEUE_PREFIX", _amqp_name),
            consumer_prefetch=get("CONSUMER_PREFETCH", _int(1, 10_000)),
            consumer_delivery_limit=get("CONSUMER_DELIVERY_LIMIT", _int(1, 1000)),
            consumer_retry_delay_ms=get("CONSUMER_RETRY_DELAY_MS", _int(0, 30_000)),
            dead_letter_exchange=get("DEAD_LETTER_EXCHANGE", _amqp_name),
            dead_letter_queue=get("DEAD_LETTER_QUEUE", _amqp_name),
            relay=get("RELAY", _flag),
            outbox_retention_days=get("OUTBOX_RETENTION_DAYS", _int(0, 36500)),
            events_exchange=get("EVENTS_EXCHANGE", _amqp_name),
            relay_batch=get("RELAY_BATCH", _int(1, 10_000)),
            watch_buffer=get("WATCH_BUFFER", _int(10, 1_000_000)),
            analytics_time_zones=get("ANALYTICS_TIME_ZONES", _time_zones),
            analytics_rollup_seconds=get("ANALYTICS_ROLLUP_SECONDS", _int(0, 86400)),
            http_host=get("HTTP_HOST", str),
            http_port=get("HTTP_PORT", _int(0, 65535)),
            stripe_webhook_secret=secret("STRIPE_WEBHOOK_SECRET", str),
            adyen_webhook_hmac_keys=secret("ADYEN_WEBHOOK_HMAC_KEYS", _hmac_keys),
            adyen_webhook_username=webhook_user,
            adyen_webhook_password=webhook_password,
            breaker_failures=get("BREAKER_FAILURES", _int(1, 1000)),
            breaker_cooldown_seconds=get("BREAKER_COOLDOWN_SECONDS", _int(1, 86400)),
            embedded_postgres=get("EMBEDDED_POSTGRES", _choice("auto", "always", "never")),
            embedded_postgres_dir=get("EMBEDDED_POSTGRES_DIR", str) or _default_data_dir(env),
            database_url_given=PREFIX + "DATABASE_URL" in env,
        )

    def __repr__(self) -> str:
        """Secrets never reach a log line or a traceback through the config: a field whose
        name says it holds a key, secret, password or token is hidden, a URL loses its
        password (a new secret setting is covered by its name)."""
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, str):
                hidden = (
                    value and _SECRET_FIELD.search(item.name) and not item.name.endswith("_file")
                )
                value = "(hidden)" if hidden else _without_password(value)
            shown.append(f"{item.name}={value!r}")
        return f"Config({', '.join(shown)})"

    def require_tokens(self) -> TokenTable:
        if self.tokens is None:
            raise ConfigError(
                f"{PREFIX}TOKENS_FILE is not set: the service needs bearer tokens to "
                "authenticate callers (examples/dev-tokens.json has development ones)"
            )
        return self.tokens
