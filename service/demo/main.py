"""Running the demo: options, tokens and channel, the run, and the exit code."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from refundretry.v1 import refund_retry_service_pb2_grpc as pb_grpc
from service.demo.access import DemoError, cast_of, is_loopback, load_tokens, open_channel
from service.demo.driver import Demo, Options, report


def _options(args: argparse.Namespace) -> Options:
    tls = args.tls or (not args.plaintext and not is_loopback(args.target))
    if not tls and (args.ca_file or args.cert_file or args.key_file):
        raise DemoError("--ca-file, --cert-file and --key-file are for TLS (--tls)", 2)
    return Options(
        target=args.target,
        tls=tls,
        seed=args.seed,
        customers=args.customers,
        days=args.days,
        http_url=args.http_url,
        concurrency=args.concurrency,
        billing_job=args.billing_job,
        keep_policy=args.keep_policy,
        metrics_wait=args.metrics_wait,
        connect_timeout=args.connect_timeout,
    )


async def _run(args: argparse.Namespace) -> int:
    options = _options(args)
    tokens = load_tokens(args.token_file)
    cast = cast_of(tokens)
    channel = open_channel(
        options.target,
        tls=options.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    async with channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), options.connect_timeout)
        except TimeoutError:
            transport = "TLS" if options.tls else "plaintext"
            other = "--plaintext" if options.tls else "--tls"
            raise DemoError(
                f"cannot reach the service at {options.target} over {transport} within "
                f"{options.connect_timeout:g} s: is it running (scripts/serve)? ({other} if "
                f"it is served over {'plaintext' if options.tls else 'TLS'})"
            ) from None
        demo = Demo(options, cast, pb_grpc.RefundRetryServiceStub(channel), tokens.source)
        try:
            outcome = await demo.run()
        except asyncio.CancelledError:
            print(
                f"refund-retry demo: interrupted; sent so far: {demo.tally.describe()}. Run "
                f"it again with --seed {options.seed} to finish (what exists is kept)",
                file=sys.stderr,
                flush=True,
            )
            raise
    sys.stdout.write(report(options, outcome, cast.reader.secret))
    return 0


async def main(args: argparse.Namespace) -> int:
    """The ``demo`` command: 0 when done, 1 when the service failed it (one line on stderr),
    2 for bad options or tokens."""
    try:
        return await _run(args)
    except DemoError as exc:
        print(f"refund-retry demo: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except grpc.aio.AioRpcError as exc:  # not expected: every call maps its errors
        print(f"refund-retry demo: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
