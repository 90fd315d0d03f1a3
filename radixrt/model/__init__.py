"""The model runner: Llama-family decoders over the paged KV pool, and checkpoint loading."""

from radixrt.model.batch import ForwardBatch, SequenceChunk, build_batch
from radixrt.model.llama import LlamaForCausalLM
from radixrt.model.loader import LoadedModel, ModelNotFoundError, load_model

__all__ = [
    "ForwardBatch",
    "LlamaForCausalLM",
    "LoadedModel",
    "ModelNotFoundError",
    "SequenceChunk",
    "build_batch",
    "load_model",
]
