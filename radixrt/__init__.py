"""radixrt: a prefix-caching LLM serving runtime."""

import os
from pathlib import Path

from radixrt.outputs import GenerateOutput
from radixrt.params import SamplingParams

__version__ = "0.1.0"
__all__ = ["Engine", "GenerateOutput", "SamplingParams", "cache_root"]


def cache_root() -> Path:
    """Where radixrt keeps what it makes once and reuses (converted models, tokenizers from servers):
    ``$RADIXRT_CACHE``, else ``~/.cache/radixrt``."""
    return Path(os.environ.get("RADIXRT_CACHE", Path.home() / ".cache" / "radixrt"))


def __getattr__(name: str):
    """``radixrt.Engine`` without importing torch and the model stack for users of the client or
    the cache alone."""
    if name == "Engine":
        from radixrt.engine import Engine

        return Engine
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
