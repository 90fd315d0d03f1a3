"""The OpenAI-compatible HTTP API of a real ``radixrt serve`` (a tiny random model), through the
official ``openai`` package, and raw HTTP for what a well-behaved client never sends."""

from __future__ import annotations

import hashlib
import json
import re

import httpx
import openai
import pytest

from radixrt import SamplingParams
from radixrt.client import Client
from radixrt.outputs import GenerateOutput
from testkit.servers import settled, wait_for

KEY = "sk-test-key"
OTHER_KEY = "sk-other-tenant"


@pytest.fixture(scope="module")
def served(serve, tiny_with_tokenizer):
    return serve(
        "--model",
        tiny_with_tokenizer,
        "--workers",
        "1",
        "--page-size",
        "4",
        "--http-port",
        "0",
        "--api-key",
        KEY,
        "--api-key",
        OTHER_KEY,
    )


@pytest.fixture(scope="module")
def api(served):
    with openai.OpenAI(base_url=served.http_url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        yield client


def zmq_output(served, prompt, max_tokens: int = 12, **params) -> GenerateOutput:
    """The same request through the ZeroMQ client (greedy unless ``params`` say otherwise), in the
    same namespace as the API key's."""
    namespace = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
    with Client(served.address) as client:
        return client.generate(
            prompt, SamplingParams(**{"max_new_tokens": max_tokens, "temperature": 0, **params}), namespace=namespace
        )


def zmq_text(served, prompt, max_tokens: int = 12, **params) -> str:
    return zmq_output(served, prompt, max_tokens, **params).text


def test_completions_and_chat_equal_the_zeromq_client(served, api):
    model = api.models.list().data[0].id
    out = api.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert out.choices[0].text == zmq_text(served, "Once upon a time")
    messages = [{"role": "user", "content": "Tell me a story."}]
    chat = api.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == zmq_text(served, messages)
    again = api.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the same prompt, served from the cache
    usage = again.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens <= 12


def test_streaming_n_stop_seed_logprobs(api):
    messages = [{"role": "user", "content": "Count with me."}]
    whole = api.chat.completions.create(model="default", messages=messages, max_tokens=16, temperature=0)
    stream = api.chat.completions.create(
        model="default",
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = whole.choices[0].message.content
    cut = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = api.chat.completions.create(model="default", messages=messages, max_tokens=16, temperature=0, stop=[cut])
    assert stopped.choices[0].message.content == text[: text.index(cut)] and stopped.choices[0].finish_reason == "stop"
    first = api.completions.create(model="default", prompt="Hello", max_tokens=8, n=3, seed=7, temperature=1.0)
    second = api.completions.create(model="default", prompt="Hello", max_tokens=8, n=3, seed=7, temperature=1.0)
    assert [c.text for c in first.choices] == [c.text for c in second.choices] and len(first.choices) == 3
    assert len({c.text for c in first.choices}) > 1
    with_logprobs = api.chat.completions.create(
        model="default", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) == with_logprobs.usage.completion_tokens and all(e.logprob <= 0 for e in content)
    assert "".join(e.token for e in content).startswith(with_logprobs.choices[0].message.content[:3])
    for entry in content:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-4)
    completion = api.completions.create(model="default", prompt="Hello", max_tokens=4, temperature=0, logprobs=2)
    assert len(completion.choices[0].logprobs.top_logprobs) == 4
    assert all(len(top) <= 2 for top in completion.choices[0].logprobs.top_logprobs)


def test_a_json_schema_response_validates(api):
    schema = {
        "type": "object",
        "properties": {"size": {"enum": [1, 2, 3]}, "ok": {"type": "boolean"}},
        "required": ["size", "ok"],
        "additionalProperties": False,
    }
    for seed in range(5):
        out = api.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "A record, please."}],
            max_tokens=40,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        )
        record = json.loads(out.choices[0].message.content)
        assert set(record) == {"size", "ok"} and record["size"] in (1, 2, 3) and isinstance(record["ok"], bool)


GUIDELLM_PREFIX = "You are the system prompt of a load test."
GUIDELLM_TEXT = "Tell me about the sea."


def guidellm_body(path: str, model: str, stream: bool) -> dict:
    """The body guidellm 0.8.1 sends (backends/openai/request_handlers.py) for a synthetic sample of 8
    output tokens: a prefix and a text column, its ``None`` values (``stop``) dropped."""
    body: dict = {"model": model}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    if path == "/v1/completions":
        return {**body, "max_tokens": 8, "ignore_eos": True, "prompt": f"{GUIDELLM_PREFIX} {GUIDELLM_TEXT}"}
    return {
        **body,
        "max_completion_tokens": 8,
        "ignore_eos": True,
        "messages": [
            {"role": "system", "content": GUIDELLM_PREFIX},
            {"role": "user", "content": [{"type": "text", "text": GUIDELLM_TEXT}]},
        ],
    }


def guidellm_chunks(served, path: str, body: dict) -> list[dict]:
    """The stream's chunks as guidellm reads them: ``data:`` lines up to ``[DONE]``, none an error."""
    chunks = []
    with httpx.stream(
        "POST", served.http_url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if not line.strip().startswith("data:"):
                continue
            data = line.strip()[len("data:") :].strip()
            if data == "[DONE]":
                return chunks
            chunk = json.loads(data)
            assert not chunk.get("error"), chunk
            chunks.append(chunk)
    raise AssertionError("the stream ended without [DONE]")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_guidellm_requests_get_what_guidellm_reads(served, api, path):
    """guidellm's exact request shapes, whole and streamed with usage in every chunk (vLLM's
    continuous_usage_stats): its text comes from the choices, its token counts from the last usage."""
    model = api.models.list().data[0].id
    reply = httpx.post(
        served.http_url + path,
        json=guidellm_body(path, model, stream=False),
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    whole = reply.json()
    assert whole["usage"]["completion_tokens"] == 8 and whole["usage"]["prompt_tokens"] > 0  # ignore_eos: all 8
    choice = whole["choices"][0]
    assert isinstance(choice["text"] if path == "/v1/completions" else choice["message"]["content"], str)

    chunks = guidellm_chunks(served, path, guidellm_body(path, model, stream=True))
    assert all("usage" in c for c in chunks)
    counted = [c["usage"]["completion_tokens"] for c in chunks]
    assert counted == sorted(counted) and counted[-1] == 8
    assert all(
        c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"] for c in chunks
    )
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0]["usage"]["completion_tokens"] == 8
    assert chunks[-1]["choices"] == []
    assert {c["usage"]["prompt_tokens"] for c in chunks} == {whole["usage"]["prompt_tokens"]}  # known from the start
    texts = [
        c["choices"][0]["text"] if path == "/v1/completions" else c["choices"][0]["delta"].get("content")
        for c in chunks
        if c["choices"]
    ]
    assert all(isinstance(t, str) for t in texts)


def test_usage_comes_in_every_chunk_only_when_asked(api):
    messages = [{"role": "user", "content": "Count with me."}]
    every = list(
        api.chat.completions.create(
            model="default",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            n=2,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    assert every and all(c.usage is not None for c in every)
    for index in (0, 1):  # each choice's chunks count that choice's tokens so far
        counted = [c.usage.completion_tokens for c in every if c.choices and c.choices[0].index == index]
        assert counted == sorted(counted) and counted[0] == 0 and 0 < counted[-1] <= 6
    assert every[-1].usage.completion_tokens == sum(
        c.usage.completion_tokens for c in every if c.choices and c.choices[0].finish_reason
    )
    last_only = list(
        api.chat.completions.create(
            model="default",
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [c.usage is not None for c in last_only] == [False] * (len(last_only) - 1) + [True]


SCHEMA = {
    "type": "object",
    "properties": {"size": {"enum": [1, 2, 3]}},
    "required": ["size"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "extra, params",
    [
        ({"top_k": 3, "temperature": 1.0, "seed": 5}, {"top_k": 3, "temperature": 1.0, "seed": 5}),
        ({"top_k": -1, "best_of": 1, "skip_special_tokens": True}, {}),  # what radixrt does anyway
        ({"min_p": 0.5, "temperature": 1.0, "seed": 5}, {"min_p": 0.5, "temperature": 1.0, "seed": 5}),
        ({"repetition_penalty": 0.01}, {"repetition_penalty": 0.01}),
        ({"guided_regex": "[0-9]{3}"}, {"regex": "[0-9]{3}"}),
        ({"regex": "(yes|no)!"}, {"regex": "(yes|no)!"}),
        ({"structured_outputs": {"choice": ["red", "green"]}}, {"choices": ("red", "green")}),
        ({"guided_choice": ["up", "down"]}, {"choices": ("up", "down")}),
        ({"structured_outputs": {"json": SCHEMA}}, {"json_schema": SCHEMA}),
        ({"guided_json": SCHEMA}, {"json_schema": SCHEMA}),
        ({"json_schema": json.dumps(SCHEMA)}, {"json_schema": SCHEMA}),
        ({"response_format": {"type": "json_object"}}, {"json_schema": {"type": "object"}}),
    ],
    ids=lambda v: ",".join(v) or "greedy",
)
def test_vllm_and_sglang_extensions_map_onto_the_sampler(served, api, extra, params):
    """Both endpoints give what the same SamplingParams give through the ZeroMQ client."""
    prompt, messages = "Pick one:", [{"role": "user", "content": "Pick one."}]
    text = api.completions.create(model="default", prompt=prompt, max_tokens=12, temperature=0, extra_body=extra)
    assert text.choices[0].text == zmq_text(served, prompt, **params)
    chat = api.chat.completions.create(
        model="default", messages=messages, max_tokens=12, temperature=0, extra_body=extra
    )
    assert chat.choices[0].message.content == zmq_text(served, messages, **params)


def test_the_extensions_take_effect(served, api):
    prompt = "Name a color: red, green, blue or white?"
    greedy, sampled = zmq_text(served, prompt), zmq_text(served, prompt, temperature=1.0, seed=5)
    assert sampled != greedy

    def text(max_tokens: int = 12, **extra) -> str:
        return (
            api.completions.create(
                model="default", prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body=extra
            )
            .choices[0]
            .text
        )

    assert text(temperature=1.0, seed=5) == sampled
    assert text(top_k=1, temperature=1.0, seed=5) == greedy  # the most likely token alone
    assert text(min_p=0.999999, temperature=1.0, seed=5) == greedy  # likewise
    assert text(repetition_penalty=0.01) != greedy  # seen tokens' logits a hundredfold: the prompt's come back
    assert re.fullmatch("[0-9]{3}", text(guided_regex="[0-9]{3}"))
    assert text(structured_outputs={"choice": ["red", "green"]}) in ("red", "green")
    assert json.loads(text(40, guided_json=SCHEMA), strict=False)["size"] in (1, 2, 3)


def test_min_tokens_hold_off_stop_token_ids(served, api):
    prompt = "Once upon a time"
    first = zmq_output(served, prompt, 4).token_ids[0]
    stopped = api.completions.create(
        model="default", prompt=prompt, max_tokens=8, temperature=0, extra_body={"stop_token_ids": [first]}
    )
    assert stopped.choices[0].text == "" and stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == 1
    held = api.completions.create(
        model="default",
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        extra_body={"stop_token_ids": [first], "min_tokens": 3},
    )
    assert held.usage.completion_tokens >= 3
    assert held.choices[0].text == zmq_text(served, prompt, 8, stop_token_ids=(first,), min_new_tokens=3)


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (json.dumps({"prompt": "x", "bogus": 1}).encode(), {}, 400, "unknown field `bogus`"),
        (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), {}, 400, "max_tokens"),
        (json.dumps({"prompt": "x", "temperature": -1}).encode(), {}, 400, "temperature must be >= 0"),
        (json.dumps({"prompt": 5}).encode(), {}, 400, "prompt must be"),
        (json.dumps({"prompt": "x", "model": "gpt-9"}).encode(), {}, 404, "does not exist"),
        (b'{"prompt": "' + b"x" * (9 << 20) + b'"}', {}, 413, "more than the"),
        (json.dumps({"prompt": "x"}).encode(), {"authorization": ""}, 401, "API key"),
        (json.dumps({"prompt": "x"}).encode(), {"authorization": "Bearer wrong"}, 401, "API key"),
        (json.dumps({"prompt": "x", "best_of": 3}).encode(), {}, 400, "best_of must equal n"),
        (json.dumps({"prompt": "x", "skip_special_tokens": False}).encode(), {}, 400, "skip_special_tokens"),
        (
            json.dumps({"prompt": "x", "regex": "a+", "guided_choice": ["a"]}).encode(),
            {},
            400,
            "one constraint at most",
        ),
        (json.dumps({"prompt": "x", "min_tokens": 9, "max_tokens": 4}).encode(), {}, 400, "min_tokens must be"),
        (json.dumps({"prompt": "x", "top_k": -2}).encode(), {}, 400, "top_k must be"),
        (json.dumps({"prompt": "x", "kv_window": 2}).encode(), {}, 400, "kv_window must be at least a page (4 tokens)"),
        (json.dumps({"prompt": "x", "sink_tokens": 4}).encode(), {}, 400, "sink_tokens (4) needs a kv_window"),
        (
            json.dumps({"prompt": "x", "structured_outputs": {"grammar": "root ::= x"}}).encode(),
            {},
            400,
            "unknown field `grammar`",
        ),
        (
            json.dumps({"prompt": "x", "stream": True, "stream_options": {"usage": True}}).encode(),
            {},
            400,
            "unknown field `usage`",
        ),
        # hostile but valid: what each would cost is refused before it is spent
        (json.dumps({"prompt": "x", "seed": 2**64}).encode(), {}, 400, "seed"),
        (json.dumps({"prompt": "x", "max_tokens": 2**63}).encode(), {}, 400, "max_tokens must be an integer"),
        (json.dumps({"prompt": "x", "stop": [f"s{i}" for i in range(1000)]}).encode(), {}, 400, "at most 16"),
        (json.dumps({"prompt": ["x"] * 10, "n": 16}).encode(), {}, 400, "64"),
        (json.dumps({"prompt": "word " * 800_000}).encode(), {}, 400, "cannot fit the context"),
        (
            b'{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "d", "schema": '
            + b'{"type": "array", "items": ' * 600
            + b'{"type": "string"}'
            + b"}" * 600
            + b"}}}",
            {},
            400,
            "json_schema",
        ),
    ],
)
def test_bad_requests_get_openai_shaped_errors_and_the_server_goes_on(served, api, body, headers, status, message):
    sent = {"authorization": f"Bearer {KEY}", "content-type": "application/json", **headers}
    reply = httpx.post(served.http_url + "/v1/completions", content=body, headers=sent, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert message in error["message"] and {"message", "type", "param", "code"} <= set(error)
    assert api.completions.create(model="default", prompt="ok", max_tokens=2).choices[0].text is not None


def test_unknown_paths_are_404_in_openai_shape(served):
    reply = httpx.get(served.http_url + "/v1/nothing", headers={"authorization": f"Bearer {KEY}"})
    assert reply.status_code == 404 and "error" in reply.json()


def test_a_client_that_leaves_mid_stream_aborts_its_request(served):
    body = {"prompt": "Tell a long story", "max_tokens": 2000, "stream": True}
    with httpx.stream(
        "POST", served.http_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30
    ) as reply:
        lines = reply.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    with Client(served.address) as client:
        wait_for(lambda: settled(client), 20, what="the abandoned stream's request to end and free its pages")


def scrape(served) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    reply = httpx.get(served.http_url + "/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert reply.status_code == 200
    values = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_metrics_move_as_requests_run(served, api):
    before = scrape(served)
    prompt = "A shared preamble for the metrics test, long enough to span pages. " * 3
    for _ in range(3):
        api.completions.create(model="default", prompt=prompt, max_tokens=5, temperature=0, seed=1)
    after = scrape(served)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta["radixrt_requests_total{outcome=finished}"] == 3
    assert delta["radixrt_output_tokens_total"] == 15
    assert 0 < delta["radixrt_cached_tokens_total"] < delta["radixrt_prompt_tokens_total"]
    assert delta["radixrt_time_to_first_token_seconds_count"] == 3
    assert delta["radixrt_inter_token_latency_seconds_count"] == 12
    assert delta["radixrt_e2e_latency_seconds_count"] == 3
    assert after["radixrt_pages_total{worker=w0}"] > 0 and "radixrt_queue_depth{worker=w0}" in after
    assert 0 < after["radixrt_hit_rate"] <= 1


def test_the_grafana_dashboard_reads_metrics_that_exist(served):
    """Every radixrt_* series the dashboard queries is one /metrics serves."""
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "examples" / "grafana.json").read_text())
    queried = {
        m for panel in dashboard["panels"] for t in panel["targets"] for m in re.findall(r"radixrt_\w+", t["expr"])
    }
    served_names = {name.split("{")[0] for name in scrape(served)}
    assert queried and queried <= served_names, sorted(queried - served_names)


def test_the_cache_page_renders_the_figures_in_a_real_browser(served, api, tmp_path):
    """Headless Chromium opens the live cache page; its script fills in the hit rate, the pages and
    the most reused prefix (the shared system prompt's first words)."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    with Client(served.address) as client:  # the prefixes other tests reused more often go
        assert client.flush_cache()
    system = {"role": "system", "content": "Zanzibar travel desk: answer in one short sentence."}
    for question in ("Where is it?", "When to go?", "What to eat?"):
        api.chat.completions.create(
            model="default", messages=[system, {"role": "user", "content": question}], max_tokens=4
        )
    page = f"{served.http_url}/?key={KEY}"
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=8000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'id="hit-rate">' in dom and 'id="hit-rate">-<' not in dom, dom[:2000]
    hit = dom.split('id="hit-rate-total">')[1].split("<")[0]
    assert hit.endswith("%") and float(hit[:-1]) > 0
    assert "worker w0" in dom and "Zanzibar" in dom.split("most reused cached prefixes")[1]
    shot = tmp_path / "cache_page.png"
    subprocess.run(
        [browser, *flags, "--window-size=1100,900", f"--screenshot={shot}", page], capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 10_000


def test_tenants_never_share_cached_prefixes(served, api):
    prompt = "A tenant's private preamble that spans a few pages of tokens, " * 2
    first = api.completions.create(model="default", prompt=prompt + "one", max_tokens=2)
    again = api.completions.create(model="default", prompt=prompt + "two", max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0 and again.usage.prompt_tokens_details.cached_tokens > 0
    with openai.OpenAI(base_url=served.http_url + "/v1", api_key=OTHER_KEY, max_retries=0) as other:
        theirs = other.completions.create(model="default", prompt=prompt + "three", max_tokens=2)
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0  # the other key's namespace has none of it


def test_a_reachable_http_api_needs_a_key(capsys):
    from radixrt.cli import main

    assert main(["serve", "--port", "0", "--http-port", "0", "--http-host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_logprobs_render_with_the_routers_tokenizer_and_fetch_it_only_without_one(
    served, api, tiny_with_tokenizer, tmp_path, monkeypatch
):
    """In ``serve``, the HTTP front end renders logprobs' tokens with the router's tokenizer: nothing
    is fetched (load_tokenizer would write it under $RADIXRT_CACHE/tokenizers). A front end that
    runs apart from the router fetches it over ZeroMQ, once, and renders the same tokens."""
    from radixrt.http.app import HttpConfig, HttpServer
    from radixrt.server.launch import ServerProcess

    def tokens(base_url: str, key: str) -> list[str]:
        with openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=60) as client:
            out = client.completions.create(
                model="default", prompt="Hello there", max_tokens=5, temperature=0, logprobs=2
            )
        return out.choices[0].logprobs.tokens

    expected = tokens(served.http_url, KEY)
    assert len(expected) == 5 and all(isinstance(t, str) for t in expected)
    own_cache = tmp_path / "serve-cache"
    with ServerProcess(
        ["--threads", "1", "--model", tiny_with_tokenizer, "--workers", "1", "--http-port", "0"],
        tmp_path / "serve.log",
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RADIXRT_CACHE": str(own_cache)},
    ) as alone:
        assert tokens(alone.http_url, "unused") == expected
    assert not (own_cache / "tokenizers").exists()

    monkeypatch.setenv("RADIXRT_CACHE", str(tmp_path / "apart-cache"))
    apart = HttpServer(HttpConfig(served.address), "127.0.0.1", 0)
    port = apart.start()
    try:
        assert tokens(f"http://127.0.0.1:{port}", "unused") == expected
    finally:
        apart.stop()
    assert any((tmp_path / "apart-cache" / "tokenizers").iterdir())
