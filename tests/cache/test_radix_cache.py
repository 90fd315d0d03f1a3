import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.cache import RadixCache
from testkit.caches import make, put


def edges(cache: RadixCache) -> list[list[int]]:
    return sorted(node.tokens.tolist() for node in cache.nodes())


def test_miss_on_empty_cache():
    cache, _ = make()
    m = cache.match_prefix([1, 2, 3])
    assert m.length == 0 and m.pages.size == 0 and m.last_node.is_root


def test_insert_then_match_returns_the_pages():
    cache, allocator = make()
    pages = put(cache, allocator, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4, 5])
    assert m.length == 4 and m.pages.tolist() == pages.tolist()
    assert cache.insert([1, 2, 3, 4], pages) == 4


def test_match_splits_an_edge_and_keeps_the_tail_node():
    cache, allocator = make()
    pages = put(cache, allocator, list(range(10)))
    [tail] = cache.nodes()
    m = cache.match_prefix([0, 1, 2, 99])
    assert m.length == 3 and m.pages.tolist() == pages[:3].tolist()
    assert edges(cache) == [[0, 1, 2], [3, 4, 5, 6, 7, 8, 9]]
    assert tail.tokens.tolist() == [3, 4, 5, 6, 7, 8, 9] and tail.parent is m.last_node
    assert cache.total_size() == 10


def test_split_under_a_lock_keeps_the_lock_on_the_whole_path():
    cache, allocator = make()
    put(cache, allocator, list(range(8)))
    m = cache.match_prefix(list(range(8)))
    cache.lock(m)
    put(cache, allocator, [0, 1, 2, 3, 50, 51])
    assert cache.protected_size() == 8 and cache.evictable_size() == 2
    assert cache.evict(100) == 2
    cache.unlock(m.last_node)
    assert cache.protected_size() == 0 and cache.evictable_size() == 8


def test_insert_returns_the_already_cached_length():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3])
    assert cache.insert([1, 2, 3, 4, 5], np.r_[cache.match_prefix([1, 2, 3]).pages, allocator.alloc(2)]) == 3
    assert edges(cache) == [[1, 2, 3], [4, 5]]
    assert cache.insert([1, 2], allocator.alloc(2)) == 2  # a prefix of an edge: the tree keeps its pages
    assert edges(cache) == [[1, 2], [3], [4, 5]]


@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_matches_are_page_aligned(page_size):
    cache, allocator = make(page_size)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 32000, 3 * page_size + page_size // 2)
    pages = put(cache, allocator, prompt)
    assert pages.size == 3 and cache.total_size() == 3
    assert cache.match_prefix(prompt).length == 3 * page_size
    diverged = prompt.copy()
    diverged[page_size + page_size // 2] += 1  # inside the second page
    m = cache.match_prefix(diverged)
    assert m.length == page_size and m.pages.tolist() == pages[:1].tolist()
    assert cache.match_prefix(prompt[: page_size - 1]).length == 0


def test_children_are_keyed_by_their_first_page():
    cache, allocator = make(page_size=4)
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 8])
    put(cache, allocator, [1, 2, 3, 4, 5, 6, 7, 9])  # differs in the last token of page 2
    assert edges(cache) == [[1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 9]]
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 7, 9]).length == 8


def test_wrong_page_count_is_an_error():
    cache, allocator = make(page_size=4)
    with pytest.raises(ValueError, match="needs 2 page ids at page_size 4, got 3"):
        cache.insert(list(range(9)), allocator.alloc(3))


def test_lru_evicts_the_least_recently_used_leaf_first():
    cache, allocator = make()
    put(cache, allocator, [1, 1, 1])
    put(cache, allocator, [2, 2, 2])
    put(cache, allocator, [3, 3, 3])
    cache.match_prefix([1, 1, 1])
    assert cache.evict(3) == 3
    assert edges(cache) == [[1, 1, 1], [3, 3, 3]]
    assert allocator.available() == 64 - 6


def test_evict_trims_a_leaf_from_its_tail():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3, 4, 5])
    assert cache.evict(2) == 2
    assert edges(cache) == [[1, 2, 3]]
    assert cache.match_prefix([1, 2, 3, 4, 5]).length == 3


def test_evict_cascades_to_parents_that_become_leaves():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3])
    put(cache, allocator, [1, 2, 4])
    assert edges(cache) == [[1, 2], [3], [4]]
    assert cache.evict(4) == 4
    assert cache.total_size() == 0 and allocator.available() == 64


def test_locked_nodes_are_never_evicted():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3])
    put(cache, allocator, [7, 8])
    m = cache.match_prefix([1, 2, 3])
    cache.lock(m)
    assert cache.evict(10) == 2  # fewer than asked: the rest is locked
    assert edges(cache) == [[1, 2, 3]]
    cache.unlock(m.last_node)
    assert cache.evict(10) == 3


def test_lock_counts_nest():
    cache, allocator = make()
    put(cache, allocator, [1, 2])
    m = cache.match_prefix([1, 2])
    node = m.last_node
    cache.lock(m)
    cache.lock(m)
    cache.unlock(node)
    assert cache.protected_size() == 2 and cache.evict(2) == 0
    cache.unlock(node)
    assert cache.evictable_size() == 2
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(node)


def test_locking_an_evicted_match_is_an_error():
    cache, allocator = make()
    put(cache, allocator, [1, 2])
    m = cache.match_prefix([1, 2])
    cache.evict(2)
    with pytest.raises(RuntimeError, match="trimmed/evicted since the match"):
        cache.lock(m)
    with pytest.raises(RuntimeError, match="was evicted"):
        cache.unlock(m.last_node)


def test_a_trimmed_match_cannot_be_locked_so_no_page_is_handed_out_twice():
    """evict trims the matched leaf's tail; the match's last page went back to the allocator and
    the next alloc hands it out again. Locking the stale match would let the request use it too."""
    cache, allocator = make(page_size=2, num_pages=4)
    put(cache, allocator, [1, 2, 3, 4, 5, 6])
    m = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert cache.evict(1) == 1  # trims the leaf: its last page is free again
    [reused] = allocator.alloc(1).tolist()
    assert reused == m.pages[-1]  # the hazard: the match still lists it
    with pytest.raises(RuntimeError, match="trimmed/evicted since the match: match again"):
        cache.lock(m)
    assert cache.protected_size() == 0
    m = cache.match_prefix([1, 2, 3, 4, 5, 6])  # matching again gives what is really cached
    cache.lock(m)
    assert m.length == 4 and reused not in m.pages.tolist()


def test_a_split_after_the_match_keeps_it_lockable():
    cache, allocator = make()
    put(cache, allocator, list(range(8)))
    m = cache.match_prefix(list(range(8)))
    cache.match_prefix([0, 1, 2, 99])  # splits the matched edge after 3 tokens
    assert edges(cache) == [[0, 1, 2], [3, 4, 5, 6, 7]]
    put(cache, allocator, [0, 1, 2, 3, 50])  # and again, under an insert
    cache.lock(m)  # the deepest node kept its identity; every matched page is still the tree's
    assert cache.protected_size() == 8 and cache.match_prefix(list(range(8))).pages.tolist() == m.pages.tolist()
    assert cache.evict(100) == 1
    cache.unlock(m.last_node)
    assert cache.evict(100) == 8 and allocator.available() == 64


def test_lock_takes_the_match_not_a_node():
    cache, allocator = make()
    put(cache, allocator, [1, 2])
    with pytest.raises(TypeError, match="MatchResult"):
        cache.lock(cache.match_prefix([1, 2]).last_node)


def test_an_empty_match_locks_nothing_even_after_its_namespace_is_dropped():
    cache, allocator = make()
    put(cache, allocator, [1, 2], namespace="t")
    m = cache.match_prefix([7, 8], namespace="t")
    cache.evict(2)
    assert cache.namespaces() == [None]
    cache.lock(m)
    cache.unlock(m.last_node)
    assert cache.protected_size() == 0


def test_namespaces_never_share_a_prefix():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3], namespace="alice")
    assert cache.match_prefix([1, 2, 3]).length == 0
    assert cache.match_prefix([1, 2, 3], namespace="bob").length == 0
    assert cache.match_prefix([1, 2, 3], namespace="alice").length == 3
    put(cache, allocator, [1, 2, 3], namespace="bob")
    assert cache.total_size() == 6
    assert set(cache.namespaces()) == {None, "alice", "bob"}


def test_an_emptied_namespace_is_dropped():
    cache, allocator = make()
    put(cache, allocator, [1, 2], namespace=("tenant", 7))
    cache.evict(2)
    assert cache.namespaces() == [None]


def test_sub_page_inserts_leave_no_namespace_roots_behind():
    cache, allocator = make(page_size=16, num_pages=64)
    for tenant in range(500):
        assert cache.insert(list(range(tenant % 16)), [], namespace=tenant) == 0
        assert cache.commit(list(range(15)), [], held=0, namespace=("c", tenant)) == 0
    put(cache, allocator, list(range(40)), namespace="full")
    assert sorted(cache.namespaces(), key=str) == [None, "full"]
    assert cache.prefix_length(list(range(40)), namespace="full") == 32
    cache.evict(cache.total_size())
    assert cache.namespaces() == [None] and allocator.available() == 64


def test_accepts_lists_arrays_and_tensors():
    cache, allocator = make()
    put(cache, allocator, [5, 6, 7])
    for tokens in ([5, 6, 7], np.array([5, 6, 7], dtype=np.int32), torch.tensor([5, 6, 7])):
        assert cache.match_prefix(tokens).length == 3


@pytest.mark.parametrize("tokens, error", [([1.5, 2.0], TypeError), ([[1, 2]], ValueError)])
def test_bad_token_ids(tokens, error):
    cache, _ = make()
    with pytest.raises(error):
        cache.match_prefix(tokens)


def test_bad_arguments():
    with pytest.raises(ValueError, match="page_size"):
        RadixCache(page_size=0)
    cache, _ = make()
    with pytest.raises(ValueError, match="negative"):
        cache.evict(-1)


def test_reset_returns_pages_and_refuses_while_locked():
    cache, allocator = make()
    put(cache, allocator, [1, 2, 3])
    m = cache.match_prefix([1, 2, 3])
    cache.lock(m)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.unlock(m.last_node)
    cache.reset()
    assert cache.total_size() == 0 and allocator.available() == 64
    assert cache.match_prefix([1, 2, 3]).length == 0


def test_without_an_allocator_evicted_pages_are_dropped():
    cache = RadixCache(page_size=2)
    cache.insert([1, 2, 3, 4], [10, 11])
    assert cache.evict(1) == 1 and cache.match_prefix([1, 2, 3, 4]).pages.tolist() == [10]


def test_long_prompt_matches_against_long_edges():
    cache, allocator = make(num_pages=20000)
    rng = np.random.default_rng(1)
    cached = rng.integers(0, 50000, 8096)
    put(cache, allocator, cached)
    prompt = np.r_[cached[:4096], cached[4096] + 1, rng.integers(0, 50000, 3000)]
    m = cache.match_prefix(prompt)
    assert m.length == 4096 and edges(cache) == sorted([cached[:4096].tolist(), cached[4096:].tolist()])


def test_commit_frees_the_pages_another_request_cached_meanwhile():
    cache, allocator = make(page_size=2, num_pages=16)
    put(cache, allocator, [1, 2])
    prompt = [1, 2, 3, 4, 5, 6, 7]  # three whole pages and a partial one
    first, second = cache.match_prefix(prompt), cache.match_prefix(prompt)
    cache.lock(first)
    cache.lock(second)
    own_a, own_b = allocator.alloc(2), allocator.alloc(2)
    assert cache.commit(prompt, np.r_[first.pages, own_a], held=first.length) == 2  # a caches its tail
    assert cache.commit(prompt, np.r_[second.pages, own_b], held=second.length) == 6  # b's tail duplicates it
    assert all(allocator.is_free(p) for p in own_b) and not any(allocator.is_free(p) for p in own_a)
    cache.unlock(first.last_node)
    cache.unlock(second.last_node)
    assert cache.match_prefix(prompt).pages.tolist() == np.r_[first.pages, own_a].tolist()
    assert allocator.used() == cache.total_size() == 3


def test_commit_needs_an_allocator_and_a_held_prefix_that_is_cached():
    with pytest.raises(ValueError, match="has none: use insert"):
        RadixCache(page_size=2).commit([1, 2], [0], held=0)
    cache, allocator = make(page_size=2)
    with pytest.raises(ValueError, match=r"multiple of page_size 2\), got 1"):
        cache.commit([1, 2], allocator.alloc(1), held=1)
    with pytest.raises(RuntimeError, match="only 0 of the 2 held tokens were cached"):
        cache.commit([1, 2], allocator.alloc(1), held=2)  # held a prefix it never matched


@settings(max_examples=200, deadline=None, derandomize=True)
@given(page_size=st.sampled_from([1, 2, 4]), data=st.data())
def test_prefix_length_is_the_match_length_and_changes_nothing(page_size, data):
    """On random trees (a small alphabet, so prompts share prefixes and diverge inside edges and
    inside pages; some leaves trimmed), prefix_length agrees with match_prefix, adds no node and
    leaves the eviction order exactly as in a copy of the tree that was never peeked at."""
    prompts = st.lists(st.integers(0, 2), max_size=12)
    inserts = data.draw(st.lists(prompts, max_size=8))
    trimmed = data.draw(st.integers(0, 4))
    queries = data.draw(st.lists(prompts, min_size=1, max_size=8))

    def build() -> RadixCache:
        cache, allocator = make(page_size, num_pages=128)
        for tokens in inserts:
            put(cache, allocator, tokens)
            cache.match_prefix(tokens[:3])  # refresh some ticks, split some edges
        cache.evict(trimmed)
        return cache

    def eviction_order(cache: RadixCache) -> list[set[int]]:
        order = []
        while cache.total_size():
            before = set(cache.cached_pages().tolist())
            cache.evict(1)
            order.append(before - set(cache.cached_pages().tolist()))
        return order

    peeked, matched = build(), build()
    nodes = edges(peeked)
    lengths = [peeked.prefix_length(np.array(q, dtype=np.int32)) for q in queries]
    assert edges(peeked) == nodes
    assert lengths == [matched.match_prefix(q).length for q in queries]
    assert eviction_order(peeked) == eviction_order(build())
    assert peeked.prefix_length([0] * 12, namespace="nobody") == 0


def test_top_prefixes_name_the_most_reused_prefixes():
    """Hits count on every node of a reused path; a prefix whose continuation was reused as often
    stands aside for the longer one."""
    from radixrt.cache import RadixCache as Cache

    cache = Cache(page_size=1)
    system, a, b = [1, 2, 3, 4], [5, 6], [7, 8, 9]
    cache.insert(system + a, list(range(6)))
    cache.insert(system + b, list(range(6, 13))[:7])
    for tokens in (system + a + [10], system + a + [11], system + b + [12]):
        cache.record_hit(cache.match_prefix(tokens))
    cache.record_hit(cache.match_prefix([99]))  # nothing matched: nothing counted
    top = cache.top_prefixes(k=3, head_tokens=5)
    assert [(t["length"], t["hits"]) for t in top] == [(4, 3), (6, 2), (7, 1)]
    assert top[0]["tokens"] == system and top[1]["tokens"] == (system + a)[:5]
