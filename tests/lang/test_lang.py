"""radixrt.lang's semantics (SGLang's frontend), on a Runtime over a tiny random model with the
default tokenizer: fast steps, real engine, real threads."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from transformers import AutoTokenizer

import radixrt.lang as sgl
from radixrt.lang.state import ProgramState

GREEDY = {"temperature": 0}
# programs that fail on purpose warn with the traceback (as SGLang's do); test_a_failed_gen_... checks it
pytestmark = pytest.mark.filterwarnings("ignore:Error in a radixrt.lang program:UserWarning")


@pytest.fixture(scope="module")
def rt(tiny_with_tokenizer):
    runtime = sgl.Runtime(tiny_with_tokenizer, page_size=16, kv_cache_bytes=16 << 20)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_with_tokenizer):
    return AutoTokenizer.from_pretrained(tiny_with_tokenizer)


def idle(rt: sgl.Runtime) -> None:
    """Nothing runs, nothing is pinned, and every page is free or cached."""
    stats = rt.stats()
    assert stats["running"] == stats["waiting"] == stats["pins"] == stats["pages_locked"] == 0, stats
    assert stats["pages_free"] + stats["pages_cached"] == stats["pages_total"]


def test_roles_render_as_the_model_s_chat_template(rt, tokenizer):
    @sgl.function
    def chat(s):
        s += sgl.user("Hi there")
        s += sgl.assistant(sgl.gen("a", max_tokens=5))
        with s.user():
            s += "And " + "then?"
        s += sgl.assistant_begin() + sgl.gen("b", max_tokens=5) + sgl.assistant_end()

    s = chat.run(backend=rt, **GREEDY)
    messages = s.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"].startswith("You are a helpful AI assistant named SmolLM")  # the template's own
    assert messages[3]["content"] == "And then?" and messages[2]["content"] == s["a"].lstrip()
    assert s.text() == tokenizer.apply_chat_template(messages[1:], tokenize=False).replace(
        f"<|im_start|>assistant\n{messages[2]['content']}", f"<|im_start|>assistant\n{s['a']}"
    ).replace(f"<|im_start|>assistant\n{messages[4]['content']}", f"<|im_start|>assistant\n{s['b']}")


def test_gen_variables_stop_and_meta_info(rt):
    @sgl.function
    def prog(s, topic):
        s += "Topic: " + topic + "\n"
        s += sgl.gen(None, max_tokens=4)
        s += sgl.gen("capped", max_tokens=3, ignore_eos=True)
        with s.var_scope("scoped"):
            s += "[" + sgl.gen("inner", max_tokens=2, ignore_eos=True) + "]"
        s["mine"] = 42

    s = prog.run(topic="cats", backend=rt, **GREEDY)
    assert s.error() is None
    assert s["mine"] == 42 and "mine" in s and "nothing" not in s
    assert s["scoped"] == f"[{s['inner']}]" and s.text().endswith(s["scoped"])
    meta = s.get_meta_info("capped")
    assert meta["completion_tokens"] == 3 and meta["finish_reason"]["type"] == "length"
    assert meta["prompt_tokens"] > 0 and "output_token_logprobs" not in meta
    assert s.text().startswith("Topic: cats\n" + s[None] + s["capped"])
    with pytest.raises(KeyError):
        s["nothing"]


def test_a_gen_s_stop_replaces_the_run_s(rt):
    @sgl.function
    def prog(s):
        s += "Count: 1, 2, 3,"
        s += sgl.gen("own", max_tokens=24, stop=[","])
        s += sgl.gen("run", max_tokens=24)

    s = prog.run(backend=rt, stop=["\n"], temperature=0)
    assert "," not in s["own"] and "\n" not in s["run"]


def test_dtype_and_regex_constrain_what_is_sampled(rt):
    """20 samples at temperature 1: each output fits its constraint exactly."""
    # bounded, so that a random model ends it (a string with maxLength would do, but xgrammar then
    # lets control characters into it, which JSON forbids)
    schema = {
        "type": "object",
        "properties": {"size": {"enum": [1, 2, 3]}, "kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}},
        "required": ["size", "kind", "ok"],
        "additionalProperties": False,
    }

    @sgl.function
    def prog(s, i):
        s += f"Record {i}: "
        s += sgl.gen("json", max_tokens=80, json_schema=json.dumps(schema))
        s += "\nCode: " + sgl.gen("code", max_tokens=12, regex=r"[A-Z]{2}-[0-9]{3}")
        s += "\nCount: " + sgl.gen_int("count", max_tokens=8)
        s += "\nFlag: " + sgl.gen("flag", max_tokens=8, dtype=bool)  # "False": at most 5 tokens

    states = prog.run_batch([{"i": i} for i in range(20)], backend=rt, temperature=1.0)
    for s in states:
        assert s.error() is None, s.error()
        record = json.loads(s["json"])
        assert set(record) == {"size", "kind", "ok"}
        assert record["kind"] in ("cat", "dog") and record["size"] in (1, 2, 3)
        assert isinstance(record["ok"], bool)
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", s["code"])
        assert re.fullmatch(sgl.REGEX_INT, s["count"] + " ") or re.fullmatch(sgl.REGEX_INT, s["count"])
        assert s["flag"] in ("True", "False")
    idle(rt)


def test_a_schema_the_library_rejects_is_an_error_before_anything_runs(rt):
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("bad", json_schema='{"type": 5}') + sgl.gen("after", max_tokens=2)

    s = prog.run(backend=rt)
    assert "json_schema constraint cannot be compiled" in str(s.error())
    assert s.text() == "x" and rt.stats()["prompt_tokens"] >= 0
    with pytest.raises(KeyError):
        s["after"]
    idle(rt)


def greedy_reference(rows: list[list[float]]) -> int:
    """Token by token, keep the choices with the best logprob (a short one padded with its mean)."""
    width = max(map(len, rows))
    padded = [r + [sum(r) / len(r)] * (width - len(r)) for r in rows]
    alive = list(range(len(rows)))
    for j in range(width):
        best = max(padded[i][j] for i in alive)
        alive = [i for i in alive if padded[i][j] == best]
        if len(alive) == 1:
            break
    return alive[0]


@pytest.mark.parametrize(
    "method", [sgl.token_length_normalized, sgl.greedy_token_selection, sgl.unconditional_likelihood_normalized]
)
def test_select_takes_the_argmax_of_the_engine_s_choice_scores(rt, method):
    choices = ["red apple", "blue", "green tea leaves", "yellow", "blue sky"]
    prompt = "My favourite thing is "

    @sgl.function
    def prog(s):
        s += prompt
        s += sgl.select("pick", choices=choices, choices_method=method)

    s = prog.run(backend=rt)
    scores = rt.call(lambda engine: engine.score_choices(prompt, choices))
    means = [sc.mean_logprob for sc in scores]
    if method is sgl.token_length_normalized:
        expected = means.index(max(means))
    elif method is sgl.greedy_token_selection:
        expected = greedy_reference([list(sc.token_logprobs) for sc in scores])
    else:  # less each choice's mean logprob without context (its first token counts 0)

        def alone(choice: str) -> list[float]:
            ids = rt.encode(choice)
            if len(ids) == 1:
                return [0.0]
            return [0.0, *rt.call(lambda engine: engine.score_choices(ids[:1], [ids[1:]])[0].token_logprobs)]

        gains = [m - sum(a) / len(a) for m, a in zip(means, map(alone, choices))]
        expected = gains.index(max(gains))
    assert s["pick"] == choices[expected]
    assert s.text() == prompt + s["pick"]
    assert s.get_meta_info("pick")["normalized_prompt_logprobs"] == pytest.approx(means)


def test_fork_computes_the_trunk_once_and_branches_batch_together(rt):
    trunk = "Shared context: " + " ".join(f"fact {i} is true." for i in range(40)) + "\n"
    sizes: list[int] = []
    runner = rt.engine.runner
    original = runner.launch

    def recording(batch, *rest):
        sizes.append(len(batch))
        return original(batch, *rest)

    @sgl.function
    def prog(s):
        s += trunk
        forks = s.fork(4)
        forks += lambda i: f"Branch {i}: " + sgl.gen("answer", max_tokens=8, ignore_eos=True)
        forks.join()

    rt.call(lambda e: e.flush_cache())
    before = rt.stats()
    rt.call(lambda e: setattr(runner, "launch", recording))
    try:
        s = prog.run(backend=rt, **GREEDY)
        answers = s["answer"]
    finally:
        rt.call(lambda e: setattr(runner, "launch", original))
    after = rt.stats()
    trunk_tokens = len(rt.encode(trunk))
    computed = after["computed_tokens"] - before["computed_tokens"]
    own = sum(len(rt.encode(f"Branch {i}: ")) for i in range(4))
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    assert computed <= trunk_tokens + own + 4 * 16, (computed, trunk_tokens)  # the trunk once (+ a page per branch)
    assert max(sizes) >= 4  # the branches decoded in one batch
    idle(rt)


def test_join_modes(rt):
    @sgl.function
    def prog(s):
        s += "Base."
        forks = s.fork(2)
        forks += [f" {word}" + sgl.gen("x", max_tokens=2, ignore_eos=True) for word in ("one", "two")]
        forks.join()
        again = s.fork(2)
        again += lambda i: sgl.gen("x", max_tokens=1, ignore_eos=True)
        again.join()  # a second fork/join of the same name gathers again (SGLang keeps the first)
        tail = s.fork(2)
        tail += lambda i: f" [{i}]"
        tail.join("concate_and_append")
        with pytest.raises(ValueError, match="Invalid value"):
            tail += " text"
        with pytest.raises(ValueError, match="Invalid join mode"):
            tail.join("merge")

    s = prog.run(backend=rt, **GREEDY)
    assert s.error() is None
    assert isinstance(s["x"], list) and len(s["x"]) == 2
    assert s.text() == "Base. [0] [1]"
    assert s.token_ids()[-len(rt.encode(" [1]")) :] == rt.encode(" [1]")
    idle(rt)


def test_a_multi_turn_program_hits_the_cache_for_every_earlier_turn(rt):
    page = 16

    @sgl.function
    def chat(s):
        for k in range(4):
            s += sgl.user(f"Turn {k}: tell me something about the number {k}.")
            s += sgl.assistant(sgl.gen(f"a{k}", max_tokens=12 + 3 * k))

    rt.call(lambda e: e.flush_cache())
    s = chat.run(backend=rt, **GREEDY)
    assert s.error() is None
    metas = [s.get_meta_info(f"a{k}") for k in range(4)]
    for before, after in zip(metas, metas[1:]):
        seen = before["prompt_tokens"] + before["completion_tokens"] - 1  # the last sampled token was never read
        assert after["cached_tokens"] >= seen // page * page, (before, after)


def test_program_exceptions_propagate_and_leave_nothing_behind(rt):
    @sgl.function
    def prog(s):
        s += "Long story: " + " ".join(["word"] * 60)
        forks = s.fork(3)
        forks += lambda i: sgl.gen("story", max_tokens=200, ignore_eos=True)
        raise RuntimeError("the program failed")

    with pytest.raises(RuntimeError, match="the program failed"):
        prog.run(backend=rt, **GREEDY)
    for _ in range(100):
        stats = rt.stats()
        if stats["running"] == stats["waiting"] == stats["pins"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    idle(rt)


def test_a_failed_gen_is_kept_in_the_state(rt):
    @sgl.function
    def prog(s):
        s += "Hello" + sgl.gen("bad", max_tokens=2, temperature=-1.0) + sgl.gen("never", max_tokens=2)

    with pytest.warns(UserWarning, match="Error in a radixrt.lang program.*temperature"):
        s = prog.run(backend=rt)
        s.sync()
    assert isinstance(s.error(), ValueError) and "temperature" in str(s.error())
    assert s.text() == "Hello"
    with pytest.raises(KeyError, match="the program failed first .*temperature"):
        s["never"]
    with pytest.raises(ValueError, match="Tried to append None"):
        s += None


def test_streaming_text_iter_gives_the_text_and_a_variable_piece_by_piece(rt):
    @sgl.function
    def prog(s):
        s += "Story:"
        s += sgl.gen("story", max_tokens=10, ignore_eos=True)

    s = prog.run(backend=rt, stream=True, **GREEDY)
    pieces = list(s.text_iter())
    assert "".join(pieces) == s.text() and len(pieces) > 1
    s = prog.run(backend=rt, stream=True, **GREEDY)
    assert "".join(s.text_iter("story")) == s["story"] and s.text().endswith(s["story"])


async def _streamed(state: ProgramState, name: str) -> list[tuple[str, dict]]:
    return [chunk async for chunk in state.text_async_iter(name, return_meta_data=True)]


@pytest.mark.parametrize("stopped", [False, True], ids=["length", "stop-string"])
def test_each_streamed_chunk_s_meta_info_agrees_with_itself(rt, stopped):
    """As SGLang's incremental streaming: a chunk's counts are the tokens so far
    (``completion_tokens == output_token_logprobs_length``), its logprobs are its new tokens' only.
    With a stop string, text that might become the stop is held back: tokens without text ride on."""

    @sgl.function
    def prog(s, end):
        s += "Story:"
        s += sgl.gen("story", max_tokens=16, ignore_eos=True, return_logprob=True, top_logprobs_num=2, stop=end)

    end = None
    if stopped:  # a stop string that begins with two whole tokens: their text waits for the next token's
        free = prog.run(end=None, backend=rt, **GREEDY).get_meta_info("story")
        ids = [t for _, t, _ in free["output_token_logprobs"]]
        text = [rt.tokenizer.decode(ids[:n]) for n in (8, 10, 11)]
        end = text[1][len(text[0]) :] + text[2][len(text[1]) :][:1]
    state = prog.run(end=end, backend=rt, stream=True, **GREEDY)
    chunks = asyncio.run(_streamed(state, "story"))
    whole = state.get_meta_info("story")
    seen, tops = [], []
    for _, meta in chunks:
        seen += meta["output_token_logprobs"]
        tops += meta["output_top_logprobs"]
        assert meta["completion_tokens"] == meta["output_token_logprobs_length"] == len(seen) == len(tops), meta
    assert "".join(text for text, _ in chunks) == state["story"]
    assert seen == whole["output_token_logprobs"] and tops == whole["output_top_logprobs"]
    assert whole["completion_tokens"] == whole["output_token_logprobs_length"] == len(seen)
    assert chunks[-1][1]["finish_reason"] == whole["finish_reason"]
    assert whole["finish_reason"]["type"] == ("stop" if stopped else "length")
    if stopped:  # the tokens held back came with a later chunk
        assert max(len(meta["output_token_logprobs"]) for _, meta in chunks) > 1


def test_run_batch_keeps_order_and_takes_positional_arguments(rt):
    @sgl.function
    def prog(s, a, b="!"):
        s += a + b
        s += sgl.gen("g", max_tokens=2, ignore_eos=True)

    states = prog.run_batch([("x",), {"a": "y", "b": "?"}, ("z", ".")], backend=rt, num_threads=2, **GREEDY)
    assert [s.text()[:2] for s in states] == ["x!", "y?", "z."]
    assert all(isinstance(s, ProgramState) for s in states)
    lazy = prog.run_batch([("q",)] * 3, backend=rt, generator_style=True, **GREEDY)
    assert [s.text()[:2] for s in lazy] == ["q!"] * 3
    with pytest.raises(TypeError, match="does not fit"):
        prog.run_batch([("a", "b", "c")], backend=rt)


def test_unsupported_inputs_say_so(rt):
    @sgl.function
    def pic(s):
        s += sgl.user(sgl.image("cat.png") + "What is this?")

    assert "text-only" in str(pic.run(backend=rt).error())
    with pytest.raises(ValueError, match="not a regular expression"):
        sgl.gen("x", regex="[unclosed")
    with pytest.raises(TypeError, match='first argument of a program must be "s"'):
        sgl.function(lambda state: None)
    n2 = sgl.function(lambda s: s.__iadd__(sgl.gen("x", n=2)))
    assert "fork" in str(n2.run(backend=rt).error())


def test_top_logprobs_num_gives_each_token_s_most_likely_alternatives(rt, tokenizer):
    @sgl.function
    def prog(s, k):
        s += "Story:" + sgl.gen(
            "g", max_tokens=6, ignore_eos=True, return_logprob=True, top_logprobs_num=k, return_text_in_logprobs=True
        )
        s += sgl.gen("plain", max_tokens=2, top_logprobs_num=k)

    meta = prog.run(k=3, backend=rt, **GREEDY).get_meta_info("g")
    assert len(meta["output_top_logprobs"]) == len(meta["output_token_logprobs"]) == 6
    for (logprob, token, text), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(top) == 3 and [e[0] for e in top] == sorted((e[0] for e in top), reverse=True)
        assert top[0][1] == token and top[0][0] == pytest.approx(logprob, abs=1e-4)  # greedy: the most likely
        assert text == tokenizer.decode([token]) and all(e[2] == tokenizer.decode([e[1]]) for e in top)
    s = prog.run(k=2, backend=rt, **GREEDY)
    assert "output_top_logprobs" not in s.get_meta_info("plain")  # without return_logprob, none (as SGLang)
    assert "output_token_logprobs_length" not in s.get_meta_info("plain")
    assert "top_logprobs" in str(prog.run(k=21, backend=rt, **GREEDY).error())  # the engine gives at most 20


def test_logprob_start_len_gives_the_prompt_s_token_logprobs_from_there(rt):
    @sgl.function
    def prog(s):
        s += "Once upon a time, in a land far away,"
        s += sgl.gen("g", max_tokens=3, ignore_eos=True, return_logprob=True, logprob_start_len=2)

    s = prog.run(backend=rt, **GREEDY)
    prompt = s.token_ids()[:-3]
    scores = rt.call(lambda engine: engine.score_choices(prompt[:2], [prompt[2:]])[0].token_logprobs)
    entries = s.get_meta_info("g")["input_token_logprobs"]
    assert [t for _, t, _ in entries] == prompt[2:] and [lp for lp, _, _ in entries] == pytest.approx(scores, abs=1e-4)


def test_the_runtime_is_its_own_endpoint_and_counts_token_usage(rt):
    @sgl.function
    def prog(s):
        s["model"] = sgl.global_config.default_backend.endpoint.get_model_name()
        s += "Name a color:" + sgl.gen("color", max_tokens=5, ignore_eos=True)

    sgl.set_default_backend(rt)
    try:
        usage = rt.endpoint.token_usage
        usage.reset()
        s = prog.run(**GREEDY)
        meta = s.get_meta_info("color")
    finally:
        sgl.set_default_backend(None)
    assert s["model"] == rt.get_server_info()["model_path"] == str(rt.engine.model_path)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        meta["prompt_tokens"],
        5,
        meta["cached_tokens"],
    )
    usage.reset()
    prefix = "A prefix long enough to fill a page of the cache, and then some more words."
    rt.endpoint.cache_prefix(prefix)
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(rt.encode(prefix)), 0)
    assert rt.stats()["pages_cached"] > 0 and rt.endpoint.flush_cache() is True
    assert rt.endpoint.get_chat_template() is rt.chat_template and rt.endpoint is rt


def test_server_info_and_flush(rt):
    info = sgl.get_server_info(rt)
    assert info["model_path"] and "hit_rate" in info
    assert sgl.flush_cache(rt) is True and rt.stats()["pages_cached"] == 0
    assert sgl.flush_cache() is False or sgl.global_config.default_backend is not None


def test_the_rest_of_the_api(rt, capsys):
    assert (sgl.REGEX_INT, sgl.REGEX_FLOAT, sgl.REGEX_BOOL, sgl.REGEX_STR) == (
        r"[-+]?[0-9]+[ \n]*",
        r"[-+]?[0-9]*\.?[0-9]+[ \n]*",
        r"(True|False)",
        r"\"[\w\d\s]*\"",
    )

    @sgl.function
    def prog(s, name, greeting="Hello"):
        s += sgl.system_begin() + "Be brief." + sgl.system_end()
        s += sgl.user_begin() + f"{greeting}, {name}" + sgl.user_end()
        with s.assistant():
            s += sgl.gen_string("quoted", max_tokens=16) + " " + sgl.gen("long", min_tokens=6, max_tokens=6)
        with s.copy() as scratch:
            scratch += sgl.gen("draft", max_tokens=2, ignore_eos=True)
        s.sync()
        return len(s.messages())

    sgl.set_default_backend(rt)
    try:
        sgl.global_config.verbosity = 2
        state = prog.bind(greeting="Hi").run(name="Ada", temperature=0)
        assert state.ret_value == 3 and state.error() is None
        assert re.fullmatch(sgl.REGEX_STR, state["quoted"])
        assert state.get_meta_info("long")["completion_tokens"] == 6  # no end-of-sequence before min_tokens
        assert state["draft"] == [state["draft"][0]] and "draft" not in state.text()  # copy(): joined, text not merged
        assert state.messages()[1]["content"] == "Hi, Ada"
        assert list(state.text_iter()) == [state.text()]  # not streamed: the whole text, once
        assert state.text() in capsys.readouterr().out  # verbosity 2 prints each program's text
    finally:
        sgl.global_config.verbosity = 0
        sgl.set_default_backend(None)
    with pytest.raises(ValueError, match="no backend"):
        prog.run(name="x")


def test_what_a_failed_state_queues_later_never_blocks_a_reader(rt):
    @sgl.function
    def prog(s):
        s += sgl.gen("bad", max_tokens=2, top_p=0.0)
        s.sync()  # the error is in the state now; what comes after is skipped
        s += sgl.gen("later", max_tokens=2)
        with s.var_scope("scope"):
            s += "x"

    s = prog.run(backend=rt)
    for name in ("later", "scope"):
        with pytest.raises(KeyError, match="the program failed first"):
            s[name]
    assert "top_p" in str(s.error())


def test_a_stop_string_inside_a_token_keeps_text_and_token_ids_in_step(rt):
    """A stop string that begins inside a generated token: the state's text keeps that token's part
    before it, and its token ids stand for exactly that text."""
    tokenizer = rt.engine.tokenizer

    @sgl.function
    def prog(s, end):
        s += "Story:" + sgl.gen("g", max_tokens=12, ignore_eos=True, stop=end)

    free = prog.run(end=None, backend=rt, temperature=0)
    ids = tokenizer.encode(free["g"], add_special_tokens=False)
    word = next(tokenizer.decode([t]) for t in ids if len(tokenizer.decode([t]).strip()) >= 3)
    s = prog.run(end=word[2:], backend=rt, temperature=0)
    assert s["g"].endswith(word[:2]) and s.get_meta_info("g")["finish_reason"]["matched"] == word[2:]
    assert tokenizer.decode(s.token_ids()) == s.text()
