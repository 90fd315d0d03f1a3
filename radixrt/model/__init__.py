"""The model runner: decoder families (Llama, Qwen, Mistral, Mixtral, DeepSeek, Gemma 2/3, gpt-oss) over the paged
KV pool, and checkpoint loading."""

from radixrt.model.batch import ForwardBatch, SequenceChunk, build_batch
from radixrt.model.decoder import CausalLM
from radixrt.model.loader import LoadedModel, ModelNotFoundError, load_model

__all__ = [
    "ForwardBatch",
    "CausalLM",
    "LoadedModel",
    "ModelNotFoundError",
    "SequenceChunk",
    "build_batch",
    "load_model",
]
