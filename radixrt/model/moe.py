"""Mixture-of-experts MLPs (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, gpt-oss): a router picks each token's
top-k experts, tokens are grouped by expert, and one grouped matmul runs every expert's slice.

The experts' weights are stacked at load, each expert's as a linear layer holds it (``gate_up [E,
2 * inter, hidden]``, ``down [E, hidden, inter]``: transformers' fused layout), and multiplied
through transposed views (column-major, what CUTLASS's grouped GEMM takes on Hopper) by
``torch.nn.functional.grouped_mm``: one call over all experts, on a CPU as on a GPU. That is used
rather than a Triton grouped GEMM of our own: it already is the one-launch kernel such a path
would be, the same call is tested here on the CPU, and a Triton kernel would need tuning on the
device to match it. A torch without it, or without it for a dtype, falls back to one matmul per
expert over its tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixrt.model.layers import GatedMLP, activation
from radixrt.model.spec import MoE, Routing

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class Router(nn.Module):
    def __init__(self, hidden: int, routing: Routing) -> None:
        super().__init__()
        self.routing = routing
        self.weight = nn.Parameter(torch.zeros(routing.experts, hidden))
        self.bias = nn.Parameter(torch.zeros(routing.experts)) if routing.router_bias else None
        if routing.score_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(routing.experts))
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's experts ``[tokens, top_k]`` and their weights (float32)."""
        r = self.routing
        logits = F.linear(x.float(), self.weight.float(), None if self.bias is None else self.bias.float())
        if r.scoring == "topk_softmax":
            top, experts = logits.topk(r.top_k, dim=-1)
            return experts, top.softmax(-1)
        scores = logits.softmax(-1) if r.scoring == "softmax" else logits.sigmoid()
        choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias.float()
        if r.groups > 1:
            grouped = choice.view(-1, r.groups, r.experts // r.groups)
            best = grouped.topk(2, dim=-1)[0].sum(-1) if r.group_score == "top2" else grouped.amax(-1)
            keep = torch.zeros_like(best).scatter_(1, best.topk(r.topk_groups, dim=-1)[1], 1.0).bool()
            masked = -torch.inf if r.scoring == "sigmoid" else 0.0
            choice = choice.masked_fill(~keep.repeat_interleave(r.experts // r.groups, dim=1), masked)
        experts = choice.topk(r.top_k, dim=-1)[1]
        weights = scores.gather(1, experts)
        if r.normalize:
            weights = weights / (weights.sum(-1, keepdim=True) + (1e-20 if r.scoring == "sigmoid" else 0.0))
        return experts, weights * r.scale


class Experts(nn.Module):
    def __init__(self, hidden: int, moe: MoE, act: str) -> None:
        super().__init__()
        experts, intermediate = moe.routing.experts, moe.intermediate
        self.act, self.limit, self.alpha = activation(act), moe.swiglu_limit, moe.swiglu_alpha
        self.gate_up = nn.Parameter(torch.zeros(experts, 2 * intermediate, hidden))
        self.down = nn.Parameter(torch.zeros(experts, hidden, intermediate))
        if moe.expert_bias:
            self.gate_up_bias = nn.Parameter(torch.zeros(experts, 2 * intermediate))
            self.down_bias = nn.Parameter(torch.zeros(experts, hidden))
        else:
            self.gate_up_bias = self.down_bias = None

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        top_k, num_experts = experts.shape[1], self.gate_up.shape[0]
        flat = experts.flatten()
        order = flat.argsort(stable=True)  # token-expert pairs grouped by expert
        counts = torch.zeros(num_experts, dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat)
        )
        ends = counts.cumsum(0).to(torch.int32)  # no bincount: its size would need a device sync (CUDA graphs)
        rows = x[order // top_k]
        gate_up = grouped_matmul(rows, self.gate_up.transpose(1, 2), ends)
        if self.gate_up_bias is not None:
            gate_up = gate_up + self.gate_up_bias[flat[order]]
        gate, up = gate_up.chunk(2, dim=-1)
        if self.limit is None:
            hidden = self.act(gate) * up
        else:  # gpt-oss
            gate, up = gate.clamp(max=self.limit), up.clamp(-self.limit, self.limit)
            hidden = (up + 1) * gate * torch.sigmoid(gate * self.alpha)
        out = grouped_matmul(hidden, self.down.transpose(1, 2), ends)
        if self.down_bias is not None:
            out = out + self.down_bias[flat[order]]
        out = out * weights.flatten()[order, None].to(out.dtype)
        return torch.zeros_like(x).index_add_(0, order // top_k, out)


def grouped_matmul(rows: torch.Tensor, weights: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows ``ends[e-1]:ends[e]`` times ``weights[e]`` (``[E, in, out]``)."""
    if _GROUPED_MM is not None:
        try:
            return _GROUPED_MM(rows, weights, offs=ends)
        except (RuntimeError, NotImplementedError):  # a dtype or device this torch's grouped GEMM lacks
            pass
    if rows.is_cuda and torch.cuda.is_current_stream_capturing():  # no host sync: every expert, masked
        at = torch.arange(rows.shape[0], device=rows.device)[:, None]
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        mask = ((at >= starts) & (at < ends)).to(rows.dtype)  # [rows, experts]
        return sum((rows @ weights[e]) * mask[:, e : e + 1] for e in range(weights.shape[0]))
    out, start = rows.new_empty(rows.shape[0], weights.shape[2]), 0
    for e, end in enumerate(ends.tolist()):
        if end > start:
            out[start:end] = rows[start:end] @ weights[e]
        start = end
    return out


class SparseMoE(nn.Module):
    def __init__(self, hidden: int, moe: MoE, act: str) -> None:
        super().__init__()
        self.gate = Router(hidden, moe.routing)
        self.experts = Experts(hidden, moe, act)
        self.shared_experts = GatedMLP(hidden, moe.shared_intermediate, act) if moe.shared_intermediate else None
        self.shared_expert_gate = nn.Linear(hidden, 1, bias=False) if moe.shared_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, *self.gate(x))
        if self.shared_experts is None:
            return out
        shared = self.shared_experts(x)
        if self.shared_expert_gate is not None:
            shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
        return out + shared
