"""CUDA graphs for decode steps: one captured forward per batch-size bucket, replayed.

A decode batch (one new token per sequence) is padded up to the next bucket with pad sequences:
token 0 at position 0, its K/V written to the first slot of ``pad_page``, a page the caller keeps
for this and never hands to a request. Every bucket's forward reads fixed device buffers sized
for the largest bucket; a step copies its batch into their prefix and replays the bucket's graph.
``max_seq_len`` is fixed at ``max_context``, so the decode kernel's launch (its number of splits)
is the same at every replay; the sequences' true lengths are read on the device. The page table's
entries past the batch's may hold a previous step's pages: ``kv_indptr`` bounds what is read.

Without capture (``capture=False``) the same padded, static-buffer forward runs eagerly: on a CPU
that is how the tests check the padding and the copies.
"""

from __future__ import annotations

import numpy as np
import torch

from radixrt.cache import KVPool
from radixrt.model import CausalLM, ForwardBatch, SequenceChunk
from radixrt.model.spec import Arch

SLACK_BYTES = 64 * 2**20  # the caching allocator's rounding over a few dozen captures


def buckets_for(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 to 64, then steps of 16: up to ``max_bs`` rounded up to its step."""
    if max_bs < 1:
        raise ValueError(f"max_bs must be positive, got {max_bs}")
    sizes = [1, 2, 4, 8, *range(16, 65, 8)]
    size = 64
    while size < max_bs:
        size += 16
        sizes.append(size)
    return sizes[: next(i for i, s in enumerate(sizes) if s >= max_bs) + 1]


class DecodeGraphs:
    """Decode forwards of ``model`` over ``pool`` at batch sizes up to ``max_bs`` (rounded up to a
    bucket), captured as CUDA graphs (``capture=True``, CUDA only) or run eagerly on the same
    static buffers. ``max_context``: the longest sequence a replay may hold (prefix + new token).

    ``run`` returns a view of one static logits buffer: valid until the next ``run`` (in stream
    order), so read or copy it first."""

    def __init__(
        self,
        model: CausalLM,
        pool: KVPool,
        *,
        max_bs: int,
        max_context: int,
        pad_page: int,
        capture: bool = True,
    ) -> None:
        device = pool.k.device
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the KV pool is on {device} (use capture=False)")
        if not 0 <= pad_page < pool.num_pages:
            raise ValueError(f"pad_page {pad_page} is not a page of the pool (0 to {pool.num_pages - 1})")
        if max_context < 1:
            raise ValueError(f"max_context must be positive, got {max_context}")
        self.model, self.pool, self.device = model, pool, device
        self.buckets = buckets_for(max_bs)
        self.max_bs = self.buckets[-1]
        self.max_context, self.pad_page, self.page_size = max_context, pad_page, pool.page_size
        self.pages_per_seq = -(-max_context // pool.page_size)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.memory_bytes = 0
        if capture:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            before = torch.cuda.memory_reserved(device)

        n = self.max_bs
        ints = dict(dtype=torch.int32, device=device)
        longs = dict(dtype=torch.int64, device=device)
        # every buffer starts as a batch of pad sequences, so warm-up and capture write pad_page alone
        self.input_ids = torch.zeros(n, **longs)
        self.positions = torch.zeros(n, **longs)
        self.qo_indptr = torch.arange(n + 1, **ints)
        self.prefix_lens = torch.zeros(n, **ints)
        self.kv_indptr = torch.arange(n + 1, **ints)
        self.kv_indices = torch.full((n * self.pages_per_seq,), pad_page, **ints)
        self.slots = torch.full((n,), pad_page * pool.page_size, **longs)
        self.logit_rows = torch.arange(n, **longs)
        self.logits = torch.zeros(n, model.config.vocab_size, dtype=torch.float32, device=device)
        self.views = {bs: self._view(bs) for bs in self.buckets}
        if capture:
            self._capture()
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            self.memory_bytes = torch.cuda.memory_reserved(device) - before

    def _view(self, bs: int) -> ForwardBatch:
        return ForwardBatch(
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            qo_indptr=self.qo_indptr[: bs + 1],
            prefix_lens=self.prefix_lens[:bs],
            kv_indptr=self.kv_indptr[: bs + 1],
            kv_indices=self.kv_indices,
            slots=self.slots[:bs],
            logit_rows=self.logit_rows[:bs],
            max_new_tokens=1,
            max_seq_len=self.max_context,
            max_prefix_len=self.max_context - 1,
        )

    def _forward(self, bs: int) -> None:
        """The bucket's forward on the static buffers, its logits into the static logits buffer (one
        buffer for every bucket: the graphs keep no output of their own in the shared pool)."""
        self.logits[:bs].copy_(self.model(self.views[bs], self.pool))

    @torch.no_grad()
    def _capture(self) -> None:
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # compiles the kernels, settles the allocator
                for bs in self.buckets:
                    for _ in range(2):
                        self._forward(bs)
            torch.cuda.current_stream().wait_stream(stream)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # warm-up's blocks go back, for the graph pool to take
            pool = torch.cuda.graph_pool_handle()
            for bs in reversed(self.buckets):  # largest first: the smaller ones fit in its blocks
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._forward(bs)
                self.graphs[bs] = graph

    def bucket(self, bs: int) -> int | None:
        """The smallest bucket of at least ``bs`` sequences; None past ``max_bs``."""
        return next((b for b in self.buckets if b >= bs), None) if bs >= 1 else None

    def can_run(self, chunks: list[SequenceChunk]) -> bool:
        """A decode batch that fits: one token per sequence, its logit wanted, every sequence
        within ``max_context`` (and its pages), and at most ``max_bs`` sequences."""
        return self.bucket(len(chunks)) is not None and all(
            len(c.tokens) == 1
            and c.first_logit in (-1, 0)
            and c.prefix_len + 1 <= self.max_context
            and len(c.pages) <= self.pages_per_seq
            for c in chunks
        )

    def pad(self, chunks: list[SequenceChunk]) -> list[SequenceChunk]:
        """``chunks`` and pad sequences up to their bucket (``can_run(chunks)`` must hold)."""
        size = self.bucket(len(chunks))
        if size is None:
            raise ValueError(f"{len(chunks)} sequences are more than max_bs {self.max_bs}")
        pad = SequenceChunk(np.zeros(1, dtype=np.int64), 0, np.array([self.pad_page], dtype=np.int32))
        return [*chunks, *[pad] * (size - len(chunks))]

    @torch.no_grad()
    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits ``[bucket, vocab]`` (float32) of ``batch``, a decode batch built from
        ``pad(chunks)``: the first ``len(chunks)`` rows are the real sequences'. A view of the
        static logits buffer, overwritten by the next run."""
        bs = batch.qo_indptr.shape[0] - 1
        if bs not in self.views:
            raise ValueError(f"a batch of {bs} sequences is no bucket ({self.buckets}): pad it first")
        if batch.input_ids.shape[0] != bs or batch.logit_rows.shape[0] != bs:
            raise ValueError("a decode batch has one new token and one logit row per sequence")
        pages = batch.kv_indices.shape[0]
        if pages > self.kv_indices.shape[0]:
            raise ValueError(f"the batch has {pages} pages, the page table holds {self.kv_indices.shape[0]}")
        for static, value in (
            (self.input_ids[:bs], batch.input_ids),
            (self.positions[:bs], batch.positions),
            (self.qo_indptr[: bs + 1], batch.qo_indptr),
            (self.prefix_lens[:bs], batch.prefix_lens),
            (self.kv_indptr[: bs + 1], batch.kv_indptr),
            (self.kv_indices[:pages], batch.kv_indices),
            (self.slots[:bs], batch.slots),
        ):
            static.copy_(value, non_blocking=True)
        graph = self.graphs.get(bs)
        if graph is not None:
            graph.replay()
        else:
            self._forward(bs)
        return self.logits[:bs]


def estimate_bytes(
    arch: Arch,
    max_bs: int,
    dtype: torch.dtype,
    *,
    max_context: int | None = None,
    page_size: int = 1,
) -> int:
    """An estimate, on the high side, of the device memory :class:`DecodeGraphs` takes: its static
    buffers plus one forward of the largest bucket's tokens with every intermediate counted as if
    alive at once (hidden states, q/k/v and RoPE, the MLP, float32 logits, the decode kernel's
    partials at its most splits), plus allocator slack. Not measured: subtract it from the KV
    pool's budget before the pool is made; ``DecodeGraphs.memory_bytes`` is the measured figure.
    ``max_context`` defaults to the model's position limit."""
    try:
        from radixrt.kernels.decode import MAX_SPLITS
    except ImportError:  # no triton: no graphs either, but the estimate still stands
        MAX_SPLITS = 32
    t, e = buckets_for(max_bs)[-1], dtype.itemsize
    hidden, vocab, heads = arch.hidden, arch.vocab, arch.heads
    kv = arch.kv_shape  # MLA: one latent "head" of 576, V its first 512
    kv_heads, k_dim, v_dim = kv["kv_heads"], kv["head_dim"], kv.get("v_head_dim", kv["head_dim"])
    own = 0 if arch.latent is None else heads * (arch.latent.nope + arch.latent.rope + arch.latent.v_head_dim) * e
    mlp = 3 * arch.intermediate * e
    if arch.moe is not None:  # each token's top-k experts' rows, their gate/up/product, the router's scores
        moe = arch.moe
        routed = moe.routing.top_k * (2 * hidden + 3 * moe.intermediate) * e + moe.routing.experts * 8
        mlp = max(mlp, routed + 3 * moe.shared_intermediate * e)
    context = max_context or arch.max_context
    static = t * (4 * 8 + 3 * 4) + 2 * 4 + t * -(-context // page_size) * 4 + t * vocab * 4
    activations = t * (
        6 * hidden * e  # embedding, norm, attention output, o_proj, residuals, MLP output
        + 3 * (heads + 2 * kv_heads) * k_dim * e  # q/k/v, their rotated halves, RoPE'd copies
        + own  # MLA's per-head query parts and output before the up-projection
        + k_dim * (2 * 8 + 2 * e)  # RoPE angles (float64) and cos/sin
        + heads * MAX_SPLITS * (v_dim + 1) * 4  # decode partials and their log-sum-exps
        + heads * v_dim * e  # attention output
        + mlp  # gate, up, their product (or the experts')
        + vocab * (e + 4)  # logits in the model's dtype, then float32
    )
    return static + activations + SLACK_BYTES
