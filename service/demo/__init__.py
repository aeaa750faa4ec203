"""``refund-retry demo``: fill a running service with realistic traffic through the sandbox
gateway (payments in four currencies, failed payments and their retries, refunds, some
awaiting approval) so that the dashboard has something to show.

It is a client of the gRPC API only (no database access), seeded and reproducible: every
request id is derived from the seed, so running it again with the same seed adds nothing.
``population`` makes the customers, ``driver`` sends them, ``access`` holds the tokens and
the channel, ``main`` runs it. This module only builds the command line, so that ``refund-retry``
does not load gRPC for its other commands before they need it.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_HTTP_URL = "http://127.0.0.1:8080"


def _count(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def add_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="fill a running service with realistic traffic through the sandbox gateway "
        "(payments, failures, retries, refunds awaiting approval) for the dashboard",
        description="Send a seeded population of customers to a running service over gRPC: "
        "payments over the last days in USD, EUR, GBP and JPY, failed payments with a "
        "realistic decline mix and their retries (RetryNow), refunds (small ones approved "
        "by policy, larger ones approved, rejected or left waiting), then print a summary "
        "and the dashboard's URL. The same seed sends the same requests: a second run adds "
        "nothing.",
    )
    demo.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help=f"the service's gRPC address (default {DEFAULT_TARGET})",
    )
    demo.add_argument(
        "--token-file",
        metavar="FILE",
        help="the server's tokens file (default: $REFUND_RETRY_TOKENS_FILE, else "
        "$REFUND_RETRY_TOKENS, else examples/dev-tokens.json as scripts/serve uses)",
    )
    demo.add_argument(
        "--customers", type=_count(1, 100_000), default=200, help="customers (default 200)"
    )
    demo.add_argument(
        "--days",
        type=_count(1, 366),
        default=30,
        help="payments are spread over this many days before now (default 30)",
    )
    demo.add_argument("--seed", type=_count(0, 2**31), default=1, help="random seed (default 1)")
    transport = demo.add_mutually_exclusive_group()
    transport.add_argument(
        "--plaintext",
        action="store_true",
        help="gRPC without TLS, as scripts/serve serves (the default for a loopback target)",
    )
    transport.add_argument(
        "--tls", action="store_true", help="gRPC over TLS (the default for other targets)"
    )
    demo.add_argument("--ca-file", metavar="PEM", help="CA certificates to trust (TLS)")
    demo.add_argument("--cert-file", metavar="PEM", help="client certificate (mutual TLS)")
    demo.add_argument("--key-file", metavar="PEM", help="client certificate's key (mutual TLS)")
    demo.add_argument(
        "--http-url",
        default=DEFAULT_HTTP_URL,
        help=f"the service's HTTP port, for the dashboard's URL (default {DEFAULT_HTTP_URL})",
    )
    demo.add_argument(
        "--concurrency",
        type=_count(1, 64),
        default=8,
        help="customers sent at a time (default 8)",
    )
    demo.add_argument(
        "--no-billing-job",
        dest="billing_job",
        action="store_false",
        help="do not call RunBillingJob; leave approved refunds to the service's own job",
    )
    demo.add_argument(
        "--keep-policy",
        action="store_true",
        help="never set auto-approval thresholds (by default the demo sets them, with an "
        "admin token, for its currencies that have none)",
    )
    demo.add_argument(
        "--metrics-wait",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="wait at most this long for the analytics roll-up to include the demo's "
        "changes before reading the recovery metrics (default 15)",
    )
    demo.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up when the service does not answer within this time (default 5)",
    )


async def run(args: argparse.Namespace) -> int:
    """The ``demo`` command: 0 when done, 1 when the service could not be used (one line on
    stderr), 2 for bad options or tokens."""
    # gRPC's core logs a failed TLS handshake (e.g. --tls against a plaintext server) on
    # stderr at INFO; the demo says what went wrong in its own one line. Read when gRPC loads.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from service.demo.main import main

    return await main(args)
