"""Reading other tools' traces: JSONL files whose bad lines are named."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def jsonl_records(path: str | Path, parse: Callable[[dict], T], what: str) -> list[T]:
    """``parse`` of each non-blank line of a JSONL file (another tool's trace); a line it cannot
    take raises ``ValueError`` naming the file, the line and ``what`` it should have been."""
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(parse(json.loads(line)))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{line_no}: not {what} ({e!r})") from None
    return records
