"""The ``refund-retry`` command: serve, migrate, run-billing-job, verify-audit, reconcile,
simulate, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from repository.database import Database, ensure_database, migrate
from service import audit, demo, embedded_db, reconciliation
from service.config import PREFIX, ROLES, Config
from service.errors import ConfigError
from service.logs import configure


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        result: int = uvloop.run(coro)
        return result
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return asyncio.run(coro)


async def _migrate(config: Config) -> int:
    # With no PostgreSQL and DATABASE_URL not set: the embedded one (service/embedded_db.py).
    async with embedded_db.database(config, apply_migrations=False) as config:
        created = await ensure_database(config.database_url)
        applied = await migrate(config.database_url)
    print(
        ("created the database; " if created else "")
        + (f"applied migrations {applied}" if applied else "schema is up to date")
    )
    return 0


@asynccontextmanager
async def _database(config: Config, size: int = 1) -> AsyncIterator[Database]:
    db = await Database.connect(config.database_url, max_size=size)
    try:
        yield db
    finally:
        await db.close()


async def _serve(config: Config) -> int:
    """Serve until SIGTERM or SIGINT. With no PostgreSQL and DATABASE_URL not set, on an
    embedded one, migrated here (the user has no separate step) and stopped on the way out.
    A signal before the service has taken over the signals (``serve`` does once it runs)
    cancels the start-up, so the embedded server is stopped then too."""
    from service.server import serve

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped_early = False

    def stop_early() -> None:
        nonlocal stopped_early
        stopped_early = True
        main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_early)
    try:
        async with embedded_db.database(config, apply_migrations=True) as config:
            await serve(config)
    except asyncio.CancelledError:
        if not stopped_early:
            raise
        print("refund-retry: stopped while starting", file=sys.stderr)
    return 0


async def _run_job(config: Config) -> int:
    from service.jobs.billing_job import JobRequest
    from service.server import build_billing_job, build_gateways

    gateways = build_gateways(config)
    try:
        async with _database(config, 4) as db:
            summary = await build_billing_job(config, db, gateways).run(
                JobRequest(limit=config.billing_job_batch)
            )
    finally:
        for gateway in gateways.values():
            await gateway.close()
    print(json.dumps({k: getattr(summary, k) for k in summary.__slots__}, default=str))
    return 0


async def _verify_audit(config: Config) -> int:
    async with _database(config) as db:
        report = await audit.verify_chain(db)
    if report.intact:
        print(f"audit chain intact: {report.rows_checked} rows")
        return 0
    print(
        f"audit chain BROKEN at sequence {report.first_broken_sequence}: {report.problem} "
        f"({report.rows_checked} rows checked)"
    )
    return 1


async def _reconcile(config: Config) -> int:
    async with _database(config) as db:
        report = await reconciliation.reconcile(db)
    for t in report.totals:
        print(
            f"{t.currency}: captured {t.captured} refunded {t.refunded} pending {t.pending} "
            f"ledger debits {t.ledger_debits} credits {t.ledger_credits} (minor units)"
        )
    for issue in report.issues:
        print(
            f"MISMATCH {issue.check} [{issue.entity_id}]: expected {issue.expected} "
            f"{issue.currency}, found {issue.actual}"
        )
    print("balanced" if report.balanced else f"{len(report.issues)} mismatches")
    return 0 if report.balanced else 1


async def _simulate(args: argparse.Namespace) -> int:
    """Simulate the retry schedules on a recoverability model; needs no database."""
    import time

    from service.simulation.engine import run_simulation
    from service.simulation.model import DEFAULT_MODEL, ModelError, load_model
    from service.simulation.report import format_report

    def progress(message: str) -> None:
        print(f"refund-retry simulate: {message}", file=sys.stderr, flush=True)

    try:
        model = DEFAULT_MODEL if args.model is None else load_model(args.model)
    except ModelError as exc:
        print(f"refund-retry: model error: {exc}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    report = await run_simulation(model, seed=args.seed, payments=args.payments, progress=progress)
    progress(
        f"{report.payments} payments x {len(report.results)} strategies simulated in "
        f"{time.perf_counter() - began:.1f} s"
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report), end="")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_simulate(sub: Any) -> None:
    simulate = sub.add_parser(
        "simulate",
        help="simulate the payment-smart and payment-fixed schedules and an oracle on failed "
        "payments drawn from a recoverability model (no database needed)",
        description="Draw failed payments from a recoverability model, retry them with the "
        "real decision code on a simulated clock (the sandbox gateway answers by the model) "
        "and print recovery rate, revenue recovered, attempts per recovery and network-rule "
        "violations per strategy. Seeded and reproducible.",
    )
    simulate.add_argument(
        "--model",
        metavar="FILE",
        help="the recoverability model, a JSON file (default: the built-in one, the same as "
        "examples/recoverability-model.json)",
    )
    simulate.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    simulate.add_argument(
        "--payments",
        type=_positive,
        metavar="N",
        help="failed payments to simulate (default: the model's population.payments)",
    )
    simulate.add_argument("--json", action="store_true", help="print the results as JSON")


COMMANDS = {
    "serve": (_serve, "run the gRPC server and the billing job until SIGTERM"),
    "migrate": (_migrate, "create the database if needed and apply pending migrations"),
    "run-billing-job": (_run_job, "execute approved refunds and due retries once"),
    "verify-audit": (_verify_audit, "recompute the audit hash chain; name the first broken row"),
    "reconcile": (_reconcile, "prove that ledger, refunds and payments agree"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="refund-retry",
        description="Refunds and payment retries for billing systems. Settings come from "
        "REFUND_RETRY_* environment variables (see the README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name == "serve":
            command.add_argument(
                "--roles",
                metavar="ROLE,...",
                help=f"what this process does, of {','.join(ROLES)} (default: all; the same as "
                f"{PREFIX}ROLES): to split the work over replicas",
            )
    _add_simulate(sub)
    demo.add_parser(sub)
    args = parser.parse_args(argv)
    # No child process of ours uses gRPC. Without fork support gRPC's core installs no fork
    # handlers, and prints no line of its own (not JSON) when serve runs pg_ctl to stop the
    # embedded PostgreSQL. Read when gRPC is first imported, which is after this.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    try:
        env = dict(os.environ)
        if getattr(args, "roles", None) is not None:
            env[f"{PREFIX}ROLES"] = args.roles
        config = Config.from_env(env)
        configure(config.log_level, config.log_format)
        if args.command == "simulate":
            return _run(_simulate(args))
        if args.command == "demo":
            return _run(demo.run(args))
        return _run(COMMANDS[args.command][0](config))
    except ConfigError as exc:
        print(f"refund-retry: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except embedded_db.EmbeddedDatabaseError as exc:
        print(f"refund-retry: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"refund-retry: cannot use the database or network: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
