"""Named SQL blocks, loaded once from ``repository/sql/*.sql``.

A block starts with ``-- name: query_name`` and runs to the next one. Python code refers to
queries only by name, so all runtime SQL lives in the .sql files beside this module.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def load(aggregate: str) -> dict[str, str]:
    text = resources.files("repository").joinpath("sql", f"{aggregate}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} defined twice in {aggregate}.sql")
        queries[name] = body.strip()
    return queries


class Queries:
    """The queries of one aggregate: ``Queries("refunds")["lock_payment"]``."""

    def __init__(self, aggregate: str) -> None:
        self._queries = load(aggregate)
        self.aggregate = aggregate

    def __getitem__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise KeyError(f"no query {name!r} in {self.aggregate}.sql") from None
