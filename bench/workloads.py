"""Seeded synthetic request streams with the prefix structure of agent programs.

Each stream is a list of prompts (int32 token-id arrays, as the cache keeps them) in arrival order. Token ids are random
but fixed by the seed, so two runs replay the same stream.
"""

from __future__ import annotations

import numpy as np

from radixrt.cache import RadixCache

VOCAB = 49152  # SmolLM2's vocabulary size


def working_set_pages(prompts: list[np.ndarray], page_size: int = 16) -> int:
    """Distinct whole pages over all prompts: what an unbounded cache ends up holding."""
    tree = RadixCache(page_size)
    for p in prompts:
        n = len(p) // page_size
        tree.insert(p[: n * page_size], np.zeros(n, dtype=np.int32))
    return tree.total_size()


def _text(rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    return rng.integers(0, VOCAB, int(rng.integers(low, high + 1)), dtype=np.int32)


def agent_sessions(seed: int = 0, sessions: int = 72, concurrent: int = 8) -> list[np.ndarray]:
    """ReAct agents sharing one system prompt and tool list (~2k tokens). Each session's prompt
    grows 200-800 tokens a turn (the last answer plus a tool result) until it reaches a limit
    between 4k and 8k; ``concurrent`` sessions interleave at random."""
    rng = np.random.default_rng(seed)
    header = np.concatenate([_text(rng, 1200, 1200), _text(rng, 800, 800)])  # system prompt, tools
    started, active, stream = 0, [], []
    while started < sessions or active:
        while len(active) < concurrent and started < sessions:
            active.append([np.concatenate([header, _text(rng, 100, 300)]), int(rng.integers(4000, 8001))])
            started += 1
        i = int(rng.integers(len(active)))
        prompt, limit = active[i]
        stream.append(prompt)
        grown = np.concatenate([prompt, _text(rng, 200, 800)])
        if len(grown) > limit:
            active.pop(i)
        else:
            active[i][0] = grown
    return stream


def tree_of_thought(seed: int = 1, problems: int = 15, branching: int = 3, depth: int = 3) -> list[np.ndarray]:
    """Tree-of-thought search: per problem, every node of a ``branching``-ary tree of thoughts
    (100-300 tokens each) is one request whose prompt is its whole path from the root."""
    rng = np.random.default_rng(seed)
    system = _text(rng, 500, 500)
    stream = []
    for _ in range(problems):
        level = [np.concatenate([system, _text(rng, 200, 400)])]
        for _ in range(depth):
            level = [np.concatenate([p, _text(rng, 100, 300)]) for p in level for _ in range(branching)]
            stream.extend(level)
    return stream


def few_shot(seed: int = 2, headers: int = 4, questions: int = 150) -> list[np.ndarray]:
    """Few-shot classification: a handful of ~1.5k-token example headers, each followed by many
    short questions (50-150 tokens), in shuffled order."""
    rng = np.random.default_rng(seed)
    heads = [_text(rng, 1200, 1800) for _ in range(headers)]
    stream = [np.concatenate([h, _text(rng, 50, 150)]) for h in heads for _ in range(questions)]
    order = rng.permutation(len(stream))
    return [stream[i] for i in order]


SYNTHETIC = {"agent": agent_sessions, "tree_of_thought": tree_of_thought, "few_shot": few_shot}
