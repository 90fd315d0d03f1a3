"""The ragged batch one forward computes, and how to build it from sequences' pages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ForwardBatch:
    """What one forward computes. Sequence b has ``prefix_lens[b]`` tokens cached already and new
    tokens ``input_ids[qo_indptr[b]:qo_indptr[b+1]]``; its pages, covering prefix and new tokens,
    are ``kv_indices[kv_indptr[b]:kv_indptr[b+1]]``; new token i is stored at ``slots[i]``.
    ``logit_rows`` picks the tokens whose logits are wanted."""

    input_ids: torch.Tensor  # [tokens] int64
    positions: torch.Tensor  # [tokens] int64
    qo_indptr: torch.Tensor  # [batch + 1] int32
    prefix_lens: torch.Tensor  # [batch] int32
    kv_indptr: torch.Tensor  # [batch + 1] int32
    kv_indices: torch.Tensor  # [pages] int32
    slots: torch.Tensor  # [tokens] int64
    logit_rows: torch.Tensor  # [n] int64
    max_new_tokens: int  # the longest run of new tokens in one sequence
    max_seq_len: int  # the longest sequence, prefix + new
    max_prefix_len: int  # the longest cached prefix: 0 for a batch of fresh prompts

    @property
    def decode(self) -> bool:
        """One new token per sequence: the decode kernel's case."""
        return self.max_new_tokens == 1 and self.input_ids.shape[0] == self.prefix_lens.shape[0]


@dataclass
class SequenceChunk:
    """New tokens of one sequence: ``tokens`` follow ``prefix_len`` cached ones; ``pages`` hold the
    whole sequence (prefix and new tokens). Logits are computed for the new tokens from index
    ``first_logit`` on (by default the last one alone). A token's position is its index in the
    sequence plus ``shift`` (a sliding window's pages no longer start at position 0)."""

    tokens: np.ndarray
    prefix_len: int
    pages: np.ndarray
    first_logit: int = -1
    shift: int = 0


def build_batch(chunks: list[SequenceChunk], page_size: int, device: torch.device | str = "cpu") -> ForwardBatch:
    new_lens = np.array([len(c.tokens) for c in chunks], dtype=np.int64)
    prefix = np.array([c.prefix_len for c in chunks], dtype=np.int64)
    at = [np.arange(c.prefix_len, c.prefix_len + len(c.tokens)) for c in chunks]
    page_of = [c.pages for c in chunks]
    slots = np.concatenate([pages[i // page_size] * page_size + i % page_size for pages, i in zip(page_of, at)])
    positions = np.concatenate([i + c.shift for i, c in zip(at, chunks)])
    qo_indptr = np.concatenate([[0], np.cumsum(new_lens)])
    rows = [np.arange(qo_indptr[b] + c.first_logit % len(c.tokens), qo_indptr[b + 1]) for b, c in enumerate(chunks)]
    device = torch.device(device)
    as_tensor = lambda a, dtype: to_device(np.asarray(a), dtype, device)  # noqa: E731
    return ForwardBatch(
        input_ids=as_tensor(np.concatenate([c.tokens for c in chunks]), torch.int64),
        positions=as_tensor(positions, torch.int64),
        qo_indptr=as_tensor(qo_indptr, torch.int32),
        prefix_lens=as_tensor(prefix, torch.int32),
        kv_indptr=as_tensor(np.concatenate([[0], np.cumsum([len(p) for p in page_of])]), torch.int32),
        kv_indices=as_tensor(np.concatenate(page_of), torch.int32),
        slots=as_tensor(slots, torch.int64),
        logit_rows=as_tensor(np.concatenate(rows), torch.int64),
        max_new_tokens=int(new_lens.max()),
        max_seq_len=int((prefix + new_lens).max()),
        max_prefix_len=int(prefix.max()),
    )


def to_device(values: list | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values on ``device``; from pinned memory on CUDA, so the copy neither blocks the host nor
    waits for the work already queued (a pageable copy would synchronise the stream: the overlap
    scheduler builds step k+1 while step k runs)."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
