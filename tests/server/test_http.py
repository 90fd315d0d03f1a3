"""The OpenAI-compatible HTTP API of a real ``radixrt serve`` (a tiny random model), through the
official ``openai`` package, and raw HTTP for what a well-behaved client never sends."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from radixrt import SamplingParams
from radixrt.client import Client
from testkit.servers import settled, wait_for

KEY = "sk-test-key"
OTHER_KEY = "sk-other-tenant"


@pytest.fixture(scope="module")
def served(serve, tiny_with_tokenizer):
    return serve("--model", tiny_with_tokenizer, "--workers", "1", "--page-size", "4", "--http-port", "0", "--api-key", KEY,
                 "--api-key", OTHER_KEY)


@pytest.fixture(scope="module")
def api(served):
    with openai.OpenAI(base_url=served.http_url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        yield client


def zmq_text(served, prompt, max_tokens: int = 12, **params) -> str:
    """The same request through the ZeroMQ client, in the same namespace as the API key's."""
    import hashlib

    namespace = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
    with Client(served.address) as client:
        return client.generate(prompt, SamplingParams(max_new_tokens=max_tokens, temperature=0, ignore_eos=False, **params),
                               namespace=namespace).text


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
    stream = api.chat.completions.create(model="default", messages=messages, max_tokens=16, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = whole.choices[0].message.content
    cut = text[len(text) // 2:len(text) // 2 + 3]
    stopped = api.chat.completions.create(model="default", messages=messages, max_tokens=16, temperature=0, stop=[cut])
    assert stopped.choices[0].message.content == text[: text.index(cut)] and stopped.choices[0].finish_reason == "stop"
    first = api.completions.create(model="default", prompt="Hello", max_tokens=8, n=3, seed=7, temperature=1.0)
    second = api.completions.create(model="default", prompt="Hello", max_tokens=8, n=3, seed=7, temperature=1.0)
    assert [c.text for c in first.choices] == [c.text for c in second.choices] and len(first.choices) == 3
    assert len({c.text for c in first.choices}) > 1
    with_logprobs = api.chat.completions.create(model="default", messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                                top_logprobs=3)
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
    schema = {"type": "object", "properties": {"size": {"enum": [1, 2, 3]}, "ok": {"type": "boolean"}},
              "required": ["size", "ok"], "additionalProperties": False}
    for seed in range(5):
        out = api.chat.completions.create(model="default", messages=[{"role": "user", "content": "A record, please."}],
                                          max_tokens=40, temperature=1.0, seed=seed,
                                          response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
        record = json.loads(out.choices[0].message.content)
        assert set(record) == {"size", "ok"} and record["size"] in (1, 2, 3) and isinstance(record["ok"], bool)


@pytest.mark.parametrize("body, headers, status, message", [
    (b"{not json", {}, 400, "not valid JSON"),
    (json.dumps({"prompt": "x", "bogus": 1}).encode(), {}, 400, "unknown field `bogus`"),
    (json.dumps({"prompt": "x", "max_tokens": "many"}).encode(), {}, 400, "max_tokens"),
    (json.dumps({"prompt": "x", "temperature": -1}).encode(), {}, 400, "temperature must be >= 0"),
    (json.dumps({"prompt": 5}).encode(), {}, 400, "prompt must be"),
    (json.dumps({"prompt": "x", "model": "gpt-9"}).encode(), {}, 404, "does not exist"),
    (b'{"prompt": "' + b"x" * (9 << 20) + b'"}', {}, 413, "more than the"),
    (json.dumps({"prompt": "x"}).encode(), {"authorization": ""}, 401, "API key"),
    (json.dumps({"prompt": "x"}).encode(), {"authorization": "Bearer wrong"}, 401, "API key"),
])
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
    with httpx.stream("POST", served.http_url + "/v1/completions", json=body,
                      headers={"authorization": f"Bearer {KEY}"}, timeout=30) as reply:
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
    assert delta["radixrt_cached_tokens_total"] > 0 and delta["radixrt_prompt_tokens_total"] > delta["radixrt_cached_tokens_total"]
    assert delta["radixrt_time_to_first_token_seconds_count"] == 3 and delta["radixrt_inter_token_latency_seconds_count"] == 12
    assert delta["radixrt_e2e_latency_seconds_count"] == 3
    assert after["radixrt_pages_total{worker=w0}"] > 0 and "radixrt_queue_depth{worker=w0}" in after
    assert 0 < after["radixrt_hit_rate"] <= 1


def test_the_grafana_dashboard_reads_metrics_that_exist(served):
    """Every radixrt_* series the dashboard queries is one /metrics serves."""
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "examples" / "grafana.json").read_text())
    queried = {m for panel in dashboard["panels"] for t in panel["targets"] for m in re.findall(r"radixrt_\w+", t["expr"])}
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
    system = {"role": "system", "content": "Zanzibar travel desk: answer in one short sentence."}
    for question in ("Where is it?", "When to go?", "What to eat?"):
        api.chat.completions.create(model="default", messages=[system, {"role": "user", "content": question}], max_tokens=4)
    page = f"{served.http_url}/?key={KEY}"
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=8000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert 'id="hit-rate">' in dom and 'id="hit-rate">-<' not in dom, dom[:2000]
    hit = dom.split('id="hit-rate-total">')[1].split("<")[0]
    assert hit.endswith("%") and float(hit[:-1]) > 0
    assert "worker w0" in dom and "Zanzibar" in dom.split("most reused cached prefixes")[1]
    shot = tmp_path / "cache_page.png"
    subprocess.run([browser, *flags, "--window-size=1100,900", f"--screenshot={shot}", page], capture_output=True, timeout=120)
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
