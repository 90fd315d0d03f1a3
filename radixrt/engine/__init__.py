"""The engine: requests, sampling, continuous batching over the radix cache, the model runner.

Names load on first use, so that ``SamplingParams`` and the output types (``params.py``,
``outputs.py``) come without torch and transformers: a client process needs neither."""
from importlib import import_module

_HOMES = {"Engine": "engine", "Request": "request", "State": "request", "SamplingParams": "params",
          "ChoiceScore": "outputs", "GenerateOutput": "outputs", "RequestFailed": "outputs", "RequestOutput": "outputs"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"radixrt.engine.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'radixrt.engine' has no attribute {name!r}")
