"""radixrt: a prefix-caching LLM serving runtime."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``radixrt.Engine`` and ``radixrt.SamplingParams`` without importing the model stack for
    users of the cache alone."""
    if name in ("Engine", "SamplingParams", "GenerateOutput"):
        import radixrt.engine

        return getattr(radixrt.engine, name)
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
