"""The engine: requests, sampling, continuous batching over the radix cache, the model runner."""
from radixrt.engine.engine import Engine
from radixrt.engine.request import ChoiceScore, GenerateOutput, Request, RequestFailed, RequestOutput, State
from radixrt.engine.sampling import SamplingParams

__all__ = ["ChoiceScore", "Engine", "GenerateOutput", "Request", "RequestFailed", "RequestOutput", "SamplingParams", "State"]
