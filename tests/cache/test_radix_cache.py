import numpy as np
import pytest
import torch

from radixrt.cache import PageAllocator, RadixCache


def make(page_size: int = 1, num_pages: int = 64) -> tuple[RadixCache, PageAllocator]:
    allocator = PageAllocator(num_pages)
    return RadixCache(page_size, allocator), allocator


def put(cache: RadixCache, allocator: PageAllocator, tokens, namespace=None) -> np.ndarray:
    pages = allocator.alloc(len(tokens) // cache.page_size)
    cached = cache.insert(tokens, pages, namespace)
    allocator.free(pages[: cached // cache.page_size])
    return pages


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
    cache.lock(m.last_node)
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
    cache.lock(m.last_node)
    assert cache.evict(10) == 2  # fewer than asked: the rest is locked
    assert edges(cache) == [[1, 2, 3]]
    cache.unlock(m.last_node)
    assert cache.evict(10) == 3


def test_lock_counts_nest():
    cache, allocator = make()
    put(cache, allocator, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    cache.lock(node)
    cache.lock(node)
    cache.unlock(node)
    assert cache.protected_size() == 2 and cache.evict(2) == 0
    cache.unlock(node)
    assert cache.evictable_size() == 2
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(node)


def test_locking_an_evicted_node_is_an_error():
    cache, allocator = make()
    put(cache, allocator, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    cache.evict(2)
    with pytest.raises(RuntimeError, match="was evicted"):
        cache.lock(node)


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
    cache.lock(m.last_node)
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
