"""Running the real ``refund-retry`` console script (and other programs) as a subprocess,
bounded in time and always reaped."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

CLI = str(Path(sys.executable).parent / "refund-retry")


def cli_env(**settings: str) -> dict[str, str]:
    """The test runner's environment without its REFUND_RETRY_* settings, plus ``settings``
    (keys without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFUND_RETRY_")}
    env.update({f"REFUND_RETRY_{k}": v for k, v in settings.items()})
    return env


async def run_program(
    program: str, *args: str, env: Mapping[str, str] | None = None, seconds: float = 60.0
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); the process is killed if it outlives ``seconds``."""
    proc = await asyncio.create_subprocess_exec(
        program,
        *args,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_cli(
    env: Mapping[str, str], *args: str, seconds: float = 60.0
) -> tuple[int, str, str]:
    return await run_program(CLI, *args, env=env, seconds=seconds)
