"""The engine: requests, sampling, continuous batching over the radix cache."""
from radixrt.engine.engine import Engine
from radixrt.engine.request import GenerateOutput, Request, State
from radixrt.engine.sampling import SamplingParams

__all__ = ["Engine", "GenerateOutput", "Request", "SamplingParams", "State"]
