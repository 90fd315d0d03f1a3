"""Fair share between tenants through the real engine: a tenant's long queue does not hold back
another tenant's request, whoever names the tenant (``tenant=`` or the namespace)."""

import pytest

from radixrt import Engine, SamplingParams
from testkit.engines import check_pages, prompts, run_to_end

pytestmark = pytest.mark.usefixtures("scheduling")  # every test in both modes (conftest.py)


@pytest.mark.parametrize("by", ["tenant", "namespace"])
def test_a_tenant_behind_anothers_queue_runs_at_the_next_free_slot(tiny, by):
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20, max_running=4)
    params = SamplingParams(max_new_tokens=3, temperature=0)
    queued = prompts(41, shared=0, own=12)
    for i, prompt in enumerate(queued[:40]):
        engine.add_request(prompt, params, request_id=f"a{i}", arrival_time=float(i), **{by: "a"})
    engine.step()
    engine.add_request(queued[40], params, request_id="b", arrival_time=100.0, **{by: "b"})
    order = [r.id for r in engine.scheduler.running]
    while "b" not in order:
        engine.step()
        order += [r.id for r in engine.scheduler.running if r.id not in order]
    assert order.index("b") <= 5  # a0..a3 ran first; when they end, a4 (the oldest) ranks equal with b
    run_to_end(engine)
    check_pages(engine)


def test_drivers_pass_the_tenant_through(tiny):
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20)
    out = engine.generate(prompts(1, 0, 8)[0], SamplingParams(max_new_tokens=2), namespace="n", tenant="t")
    assert out.token_ids and len(engine.score_choices([1, 2, 3], [[4], [5]], tenant="t")) == 2
    with pytest.raises(ValueError, match="a tenant is a string"):
        engine.add_request([1, 2, 3], tenant=7)
    check_pages(engine)
