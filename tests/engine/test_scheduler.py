"""The scheduler on its own (no model): priority, starvation guard, page reserve, memory pressure."""

import time

import numpy as np
import pytest

from radixrt.cache import PageAllocator, RadixCache
from radixrt.engine.request import Request, State
from radixrt.engine.scheduler import LPM_MAX_WAITING, Scheduler
from radixrt.params import SamplingParams

PAGE = 4


def scheduler(num_pages: int, budget: int = 10_000, chunk: int = 10_000, max_running: int = 64) -> Scheduler:
    allocator = PageAllocator(num_pages)
    return Scheduler(
        RadixCache(PAGE, allocator), allocator, max_batch_tokens=budget, chunk_size=chunk, max_running=max_running
    )


def request(rid: str, tokens, arrival: float | None = None, max_new: int = 100) -> Request:
    return Request(
        rid,
        np.asarray(tokens, dtype=np.int32),
        SamplingParams(max_new_tokens=max_new),
        max_new,
        arrival=time.perf_counter() if arrival is None else arrival,
    )


def step(s: Scheduler) -> list[tuple[Request, int]]:
    """One scheduling step as the engine runs it; a request whose tokens are all computed gets a
    next token, as sampling would give it."""
    batch = s.schedule()
    for req, n in batch:
        s.progress(req, n)
        if req.computed == req.length:
            req.add_pending()
            req.resolve(7, 0.0, 0.0)
    return batch


def cache_prefix(s: Scheduler, tokens) -> None:
    """Run a request over ``tokens`` to the end, leaving them in the cache."""
    req = request("warm", tokens, max_new=1)
    s.waiting.append(req)
    step(s)
    s.remove(req)


def test_the_longest_cached_prefix_goes_first():
    s = scheduler(64, max_running=1)
    cache_prefix(s, list(range(40)))
    s.waiting += [request("cold", list(range(100, 140))), request("warm", list(range(40)) + [1, 2])]
    assert [r.id for r, _ in step(s)] == ["warm"]


def test_waiting_earns_an_age_credit():
    """A request waiting one second ranks as if 1000 more of its tokens were cached: it beats a
    fresh request with 40 cached tokens."""
    s = scheduler(64, max_running=1)
    cache_prefix(s, list(range(40)))
    s.waiting += [
        request("old", list(range(100, 140)), arrival=time.perf_counter() - 1.0),
        request("warm", list(range(40)) + [1, 2]),
    ]
    assert [r.id for r, _ in step(s)] == ["old"]


def test_a_long_queue_is_taken_in_arrival_order():
    s = scheduler(1024, max_running=1)
    cache_prefix(s, list(range(40)))
    now = time.perf_counter()
    s.waiting += [request(f"cold{i}", [200 + i] * 8, arrival=now + i * 1e-6) for i in range(LPM_MAX_WAITING)]
    s.waiting.append(request("warm", list(range(40)) + [1, 2], arrival=now + 1))
    assert [r.id for r, _ in step(s)] == ["cold0"]


def test_ranking_leaves_the_tree_as_it_was():
    s = scheduler(64, max_running=1)
    cache_prefix(s, list(range(40)))
    nodes = [(n.id, n.tick) for n in s.cache.nodes()]
    s.waiting.append(request("diverges", list(range(20)) + [99] * 10))  # would split an edge if matched
    s._by_priority()
    assert [(n.id, n.tick) for n in s.cache.nodes()] == nodes


def test_admission_keeps_a_page_for_each_decoder():
    """A newcomer that would take the last free pages waits while a decoder may need one for its
    next token; without that reserve the decoder would soon push it out again."""
    s = scheduler(5)
    decoder = request("decoder", list(range(6)))
    s.waiting.append(decoder)
    step(s)  # 6 prompt tokens on 2 pages, a 7th sampled
    s.waiting.append(request("newcomer", list(range(100, 112))))  # 3 pages: exactly what is free
    for _ in range(3):
        assert [r.id for r, _ in step(s)] == ["decoder"]
    assert decoder.pages.size == 3 and s.stats.retractions == 0 and [r.id for r in s.waiting] == ["newcomer"]


def test_memory_pressure_retracts_the_newest():
    s = scheduler(6)
    reqs = {name: request(name, [10 * i + 1] * 6, arrival=float(i)) for i, name in enumerate(["old", "mid", "new"])}
    s.waiting += list(reqs.values())
    for _ in range(3):
        step(s)  # all admitted at once, 2 pages each: the pool is full; the 9th token needs a 3rd page
    assert all(r.state is State.RUNNING and r.length == 9 for r in reqs.values())
    step(s)
    assert reqs["new"].state is State.WAITING and reqs["new"].retractions == 1
    assert reqs["old"].retractions == reqs["mid"].retractions == 0
    assert reqs["old"].state is reqs["mid"].state is State.RUNNING and reqs["old"].length == reqs["mid"].length == 10


def test_a_newcomer_in_prefill_steps_back_rather_than_retract_an_older_request():
    s = scheduler(8, chunk=8)
    old = request("old", [1] * 7, arrival=0.0)
    s.waiting.append(old)
    step(s)
    newcomer = request("long", list(range(100, 124)), arrival=10.0)  # 6 pages, fed 8 tokens a step
    s.waiting.append(newcomer)
    for _ in range(5):
        step(s)
    assert old.retractions == 0 and old.state is State.RUNNING and old.num_output == 6
    assert newcomer.retractions == 1 and newcomer.state is State.WAITING


def test_a_request_that_cannot_fit_even_alone_fails_and_frees_its_pages():
    s = scheduler(4)
    req = request("huge", list(range(10)), max_new=100)
    s.waiting.append(req)
    for _ in range(10):
        step(s)
    assert req.state is State.FAILED and "out of KV cache memory" in req.error and s.failed == [req]
    assert s.allocator.available() + s.cache.total_size() == 4 and s.cache.protected_size() == 0


@pytest.mark.parametrize("enable_cache", [True, False])
def test_pages_add_up_after_everything_is_removed(enable_cache):
    s = scheduler(32)
    s.enable_cache = enable_cache
    reqs = [request(name, list(range(i, i + 9))) for i, name in enumerate("abc")]
    s.waiting += reqs
    for _ in range(5):
        step(s)
    for r in reqs:
        s.remove(r)
    assert s.allocator.available() + s.cache.total_size() == 32 and s.cache.protected_size() == 0


def test_a_long_queue_over_a_cached_prefix_is_admitted_together():
    """Past LPM_MAX_WAITING nothing is ranked, but a shared prefix that is cached already is no
    reason to wait: the step admits as many as it may run."""
    s = scheduler(4096, max_running=16)
    system = list(range(40))
    cache_prefix(s, system)
    s.waiting += [request(f"q{i}", system + [100 + i] * 4) for i in range(LPM_MAX_WAITING + 1)]
    assert len(step(s)) == 16


def test_a_burst_over_an_uncached_prefix_waits_for_the_first():
    s = scheduler(4096)
    system = list(range(40))
    s.waiting += [request(f"q{i}", system + [100 + i] * 4) for i in range(5)]
    assert [r.id for r, _ in step(s)] == ["q0"]
    assert len(step(s)) == 1 + 4  # q0 decoding, the others over the cached prefix


def test_a_step_feeds_at_most_the_token_budget():
    """Prompts are fed in chunks that fit the step's budget, running requests first; a request
    that steps back leaves the others scheduled."""
    s = scheduler(4096, budget=16, chunk=100)
    s.waiting += [request(f"p{i}", list(range(100 * i, 100 * i + 30))) for i in range(3)]
    fed = []
    for _ in range(12):
        batch = step(s)
        assert sum(n for _, n in batch) <= 16
        fed.append({r.id: n for r, n in batch})
    assert fed[0] == {"p0": 16} and fed[1] == {"p0": 14, "p1": 2}
    assert all(r.state is State.RUNNING and r.num_output > 0 for r in s.running) and len(s.running) == 3


def test_admission_fits_exactly_its_pages_and_the_decoders_reserve():
    s = scheduler(6)
    s.waiting.append(request("decoder", list(range(6))))
    step(s)
    s.waiting.append(request("newcomer", list(range(100, 112))))  # 3 pages; 4 free, one kept for the decoder
    assert sorted(r.id for r, _ in step(s)) == ["decoder", "newcomer"]


def test_namespaces_never_wait_for_each_other():
    """The same prompt in two namespaces shares no cache entry, so neither waits for the other."""
    s = scheduler(4096)
    prompt = list(range(40))
    s.waiting += [request("alice", prompt), request("bob", prompt)]
    s.waiting[0].namespace, s.waiting[1].namespace = "alice", "bob"
    assert sorted(r.id for r, _ in step(s)) == ["alice", "bob"]


def test_stats_add_up():
    s = scheduler(10)
    system = list(range(16))
    for i in range(3):
        req = request(f"r{i}", system + [100 + i] * 4, max_new=2)
        s.waiting.append(req)
        step(s)
        step(s)
        s.remove(req)
    assert (s.stats.prompt_tokens, s.stats.cached_tokens, s.stats.computed_tokens) == (60, 32, 16 + 4 + 4 + 4)
    assert s.stats.decode_tokens == 3
    reqs = [
        request(f"big{i}", list(range(200 + 8 * i, 208 + 8 * i)), arrival=float(i), max_new=5 + 4 * i) for i in range(4)
    ]
    s.waiting += reqs
    for _ in range(30):
        step(s)
    assert s.stats.evicted_pages >= 2 and s.stats.retractions == sum(r.retractions for r in reqs) >= 2


def tenant_request(rid: str, tenant: str, arrival: float, namespace: str | None = None) -> Request:
    """A request of ``tenant`` over a prompt no other request shares (its arrival makes it unique)."""
    req = request(rid, [1000 + round(arrival * 1e6) % 10**6] * 8, arrival=arrival)
    req.namespace, req.tenant = namespace, tenant
    return req


def admitted(s: Scheduler) -> list[str]:
    """The requests one step admits, in the order it admits them."""
    before = set(s.running)
    return [r.id for r, _ in step(s) if r not in before]


@pytest.mark.parametrize("queued", [40, LPM_MAX_WAITING + 1])
def test_a_tenant_behind_a_long_queue_gets_the_next_free_slot(queued):
    """Tenant a queues many, then tenant b one: b is admitted as soon as a slot frees (ranked or,
    past LPM_MAX_WAITING, in arrival order), not after a's queue."""
    s = scheduler(4096, max_running=4)
    now = time.perf_counter()
    s.waiting += [tenant_request(f"a{i}", "a", now + i * 1e-6) for i in range(queued)]
    assert admitted(s) == ["a0", "a1", "a2", "a3"]
    s.waiting.append(tenant_request("b", "b", now + 1))
    s.remove(s.running[0])
    assert admitted(s) == ["b"]


def test_tenants_take_turns_within_a_step():
    s = scheduler(4096, max_running=6)
    now = time.perf_counter()
    s.waiting += [tenant_request(f"a{i}", "a", now + i * 1e-6) for i in range(10)]
    s.waiting += [tenant_request(f"b{i}", "b", now + 1 + i * 1e-6) for i in range(10)]
    assert admitted(s) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_the_tenant_is_the_namespace_unless_given():
    """Namespaces stand for tenants by default; a tenant given counts across its namespaces."""
    assert Request("r", np.zeros(2, np.int32), SamplingParams(), 1, "ns").tenant == "ns"
    now = time.perf_counter()
    s = scheduler(4096, max_running=3)
    for i, namespace in enumerate("xxxy"):
        s.waiting.append(Request(f"{namespace}{i}", np.full(8, 10 + i, np.int32), SamplingParams(), 1, namespace))
        s.waiting[-1].arrival = now + i
    assert admitted(s) == ["x0", "y3", "x1"]

    s = scheduler(4096, max_running=3)
    s.waiting += [tenant_request(f"a{i}", "a", now + i, namespace=f"n{i}") for i in range(3)]
    s.waiting.append(tenant_request("b", "b", now + 5, namespace="n0"))
    assert admitted(s) == ["a0", "b", "a1"]
