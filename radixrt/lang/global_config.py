"""Settings shared by every program of the process (SGLang's ``global_config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalConfig:
    verbosity: int = 0  # 2 or more: print each program's text when it returns
    default_backend: Any = None  # what programs run on when run() names no backend


global_config = GlobalConfig()
