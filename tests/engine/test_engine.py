"""The engine on tiny random checkpoints (fast) and on the default model."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from radixrt import Engine, SamplingParams
from radixrt.model import ModelNotFoundError
from radixrt.model.loader import converted_dir, default_gguf

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=113, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512)
    path = tmp_path_factory.mktemp("tiny")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return str(path)


def prompts(n: int, shared: int, own: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, 113, (shared,), generator=g).tolist()
    return [head + torch.randint(0, 113, (own,), generator=g).tolist() for _ in range(n)]


def check_pages(engine: Engine) -> None:
    """Nothing leaked: every page is free or cached, and nothing is pinned."""
    assert engine.allocator.available() + engine.cache.total_size() == engine.pool.num_pages
    assert engine.cache.protected_size() == 0


@pytest.mark.parametrize("page_size, chunk_size", [(1, 1024), (16, 1024), (16, 7), (1, 5)])
def test_prefix_reuse_is_exact(tiny, page_size, chunk_size):
    """A request that shares a prefix with a finished one computes only its new tokens and
    generates what it would with the cache off."""
    first, second = prompts(2, shared=70, own=9)
    cached = Engine(tiny, page_size=page_size, chunk_size=chunk_size, kv_cache_bytes=4 << 20)
    uncached = Engine(tiny, page_size=page_size, chunk_size=chunk_size, kv_cache_bytes=4 << 20, enable_cache=False)
    cached.generate(first, GREEDY)
    before = cached.stats()["computed_tokens"]
    out = cached.generate(second, GREEDY)
    aligned_shared = 70 // page_size * page_size
    assert out.cached_tokens == aligned_shared
    assert cached.stats()["computed_tokens"] - before == len(second) - aligned_shared
    assert out.token_ids == uncached.generate(second, GREEDY).token_ids
    check_pages(cached)
    check_pages(uncached)


def test_concurrent_requests_share_and_match_sequential(tiny):
    batch = prompts(6, shared=40, own=5, seed=1)
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20)
    together = [o.token_ids for o in engine.generate(batch, GREEDY)]
    alone = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20, enable_cache=False)
    assert together == [alone.generate(p, GREEDY).token_ids for p in batch]
    check_pages(engine)


def test_memory_pressure_retracts_and_finishes_everything(tiny):
    """50 concurrent requests on a pool sized for about 5 finish with the outputs of an
    unconstrained run, and no page leaks."""
    batch = prompts(50, shared=24, own=20, seed=2)
    params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
    roomy = Engine(tiny, page_size=4, kv_cache_bytes=8 << 20)
    per_token = roomy.pool.bytes_per_token
    tight = Engine(tiny, page_size=4, kv_cache_bytes=5 * (44 + 20) * per_token, max_batch_tokens=256)
    expected = [o.token_ids for o in roomy.generate(batch, params)]
    got = tight.generate(batch, params)
    assert [o.token_ids for o in got] == expected
    assert all(o.finish_reason == "length" for o in got)
    assert tight.stats()["retractions"] > 0 or tight.stats()["evicted_pages"] > 0
    check_pages(tight)


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ([], None, "empty"),
        ([1] * 600, None, "context is 512"),
        ([5, 113], None, "outside the vocabulary"),
        ([5], SamplingParams(temperature=-1), "temperature"),
        ([5], SamplingParams(top_p=0), "top_p"),
        ([5], SamplingParams(top_p=1.5), "top_p"),
        ([5], SamplingParams(max_new_tokens=-1), "max_new_tokens"),
        ("text", None, "no tokenizer"),
    ],
)
def test_bad_input_is_refused_and_the_engine_goes_on(tiny, prompt, params, message):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, params)
    assert len(engine.generate([1, 2, 3], GREEDY).token_ids) == 12
    check_pages(engine)


def test_unknown_model_path_says_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found.*config.json.*gguf"):
        Engine(str(tmp_path / "nope"))


def test_abort_frees_everything(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    rid = engine.add_request(prompts(1, 30, 3)[0], SamplingParams(max_new_tokens=100, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.abort(rid) and engine.requests[rid].finish_reason == "abort"
    check_pages(engine)


def test_sampling_is_seeded(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    params = SamplingParams(max_new_tokens=16, temperature=0.8, top_k=20, top_p=0.9, seed=7, ignore_eos=True)
    a, b = engine.generate([3, 4, 5], params), engine.generate([3, 4, 5], params)
    assert a.token_ids == b.token_ids and len(a.logprobs or [1]) > 0


def test_a_burst_sharing_an_uncached_prefix_computes_it_once(tiny):
    burst = prompts(4, shared=64, own=8, seed=3)
    engine = Engine(tiny, page_size=16, kv_cache_bytes=4 << 20)
    outs = engine.generate(burst, GREEDY)
    assert engine.stats()["computed_tokens"] == 64 + 4 * 8
    assert [o.cached_tokens for o in outs] == [0, 64, 64, 64]


def test_score_choices_match_transformers(tiny):
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)
    hf = AutoModelForCausalLM.from_pretrained(tiny).eval()
    prompt = prompts(1, shared=30, own=0, seed=4)[0]
    choices = [[7], [8, 9, 10], [11, 12]]
    scores = engine.score_choices(prompt, choices)
    for choice, score in zip(choices, scores):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([prompt + choice])).logits[0].float(), -1)
        expected = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(choice))
        assert score.num_tokens == len(choice) and abs(score.logprob - expected) < 1e-3
    assert engine.stats()["computed_tokens"] == len(prompt)  # the prompt once; the choices are not prompt tokens
    check_pages(engine)


@pytest.fixture(scope="module")
def default_engine():
    return Engine(page_size=16)


def test_default_model_greedy_equals_transformers(default_engine):
    hf = AutoModelForCausalLM.from_pretrained(converted_dir(default_gguf()), dtype=torch.float32).eval()
    questions = ["What is the capital of France?", "Name three colours.", "What is 12 times 12?"]
    prompts_ = [default_engine.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    outs = default_engine.generate(prompts_, SamplingParams(max_new_tokens=32, temperature=0))
    for p, out in zip(prompts_, outs):
        with torch.no_grad():
            expected = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False)[0, len(p):].tolist()
        assert out.token_ids == expected


def test_stop_strings_cut_the_text(default_engine):
    prompt = default_engine.apply_chat_template([{"role": "user", "content": "Count from 1 to 10, separated by commas."}])
    out = default_engine.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0, stop=("5",)))
    assert out.finish_reason == "stop" and "5" not in out.text and "4" in out.text
    out = default_engine.generate(prompt, SamplingParams(max_new_tokens=40, temperature=0, stop=("5", "3")))
    assert out.finish_reason == "stop" and "3" not in out.text and "2" in out.text  # the earliest stop string wins


def test_streamed_pieces_add_up_to_the_text(default_engine):
    prompt = default_engine.apply_chat_template([{"role": "user", "content": "Write a haiku about the sea, with emoji."}])
    params = SamplingParams(max_new_tokens=48, temperature=0)
    pieces = list(default_engine.stream(prompt, params))
    out = default_engine.generate(prompt, params)
    assert len(pieces) > 5 and "".join(pieces) == out.text == default_engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_a_bad_prompt_in_a_batch_queues_nothing(tiny):
    engine = Engine(tiny, kv_cache_bytes=4 << 20)
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[1, 2, 3], []], GREEDY)
    assert not engine.requests and not engine.scheduler.waiting


def test_namespaces_do_not_share_the_cache(tiny):
    """A tenant's prompt is never served from another tenant's cache entries."""
    prompt = prompts(1, shared=40, own=0, seed=5)[0]
    engine = Engine(tiny, page_size=4, kv_cache_bytes=4 << 20)

    def run(namespace):
        rid = engine.add_request(prompt, GREEDY, namespace=namespace)
        while not engine.requests[rid].done:
            engine.step()
        return engine.requests.pop(rid)

    assert run("alice").cached_tokens == 0
    assert run("bob").cached_tokens == 0
    assert run("alice").cached_tokens == 36  # whole pages of all but the last prompt token
    check_pages(engine)
