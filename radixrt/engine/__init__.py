"""The engine: requests, sampling, continuous batching over the radix cache, the model runner.
``SamplingParams`` and the output types live below it (``radixrt.params``, ``radixrt.outputs``),
without torch, so clients import them cheaply."""

from radixrt.engine.engine import Engine

__all__ = ["Engine"]
