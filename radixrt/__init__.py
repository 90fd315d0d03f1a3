"""radixrt: a prefix-caching LLM serving runtime."""
from radixrt.outputs import GenerateOutput
from radixrt.params import SamplingParams

__version__ = "0.1.0"
__all__ = ["Engine", "GenerateOutput", "SamplingParams"]


def __getattr__(name: str):
    """``radixrt.Engine`` without importing torch and the model stack for users of the client or
    the cache alone."""
    if name == "Engine":
        from radixrt.engine import Engine

        return Engine
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
