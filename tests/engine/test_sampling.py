import math

import numpy as np
import pytest
import torch

from radixrt.engine.sampling import GREEDY_EPS, SamplingParams, sample_batch


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_k=True), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(presence_penalty=-2.5), "presence_penalty"),
        (dict(seed=True), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(stop=("",)), "stop"),
        (dict(stop=("ok", 3)), "stop"),
        (dict(stop=5), "stop"),
        (dict(stop_token_ids=(5, 100)), "stop_token_ids"),
        (dict(stop_token_ids=(True,)), "stop_token_ids"),
        (dict(stop_token_ids=5), "stop_token_ids"),
    ],
)
def test_impossible_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params).validate(vocab_size=100)


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as error:
        SamplingParams.from_dict({"temprature": 0.5, "top_k": True, "stop_token_ids": 5, "seed": "x"}).validate(100)
    for name in ("temprature", "top_k", "stop_token_ids", "seed"):
        assert name in str(error.value)


def test_unknown_keys_from_a_message_are_refused():
    with pytest.raises(ValueError, match="unknown sampling parameter.*temprature"):
        SamplingParams.from_dict({"temprature": 0.5}).validate(100)


def test_stop_string_and_lists_are_normalised():
    assert SamplingParams(stop="END").stop == ("END",)
    assert SamplingParams(stop=["a", "b"], stop_token_ids=[1, 2]) == SamplingParams(
        stop=("a", "b"), stop_token_ids=(1, 2)
    )
    params = SamplingParams.from_dict({"stop": "END", "stop_token_ids": [3], "max_new_tokens": 3})
    assert params == SamplingParams(max_new_tokens=3, stop=("END",), stop_token_ids=(3,))
    params.validate(100)
    SamplingParams(stop=None, stop_token_ids=None).validate(100)


def test_temperatures_below_the_threshold_are_greedy():
    assert all(SamplingParams(temperature=t).greedy for t in (0, 0.0, 1e-40, GREEDY_EPS / 2))
    assert not any(SamplingParams(temperature=t).greedy for t in (GREEDY_EPS, 0.5, 1))
    SamplingParams(temperature=1e-40).validate(100)


LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])  # softmax 0.563 0.207 0.126 0.028 0.076; / max: 1 .37 .22 .05 .14
ALL = range(5)


def run(logits, params, generators=None, **penalty_ids):
    """``sample_batch`` with the default generator fixed, leaving the caller's random state alone."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return sample_batch(logits, params, generators or [None] * len(params), **penalty_ids)


def draw(params: SamplingParams, logits=LOGITS, n: int = 10000):
    return run(logits.expand(n, -1).contiguous(), [params] * n)


def restricted(keep, temperature=1.0, logits=LOGITS) -> torch.Tensor:
    """softmax(logits / temperature) renormalised over ``keep``."""
    scaled = torch.full_like(logits, -math.inf)
    scaled[list(keep)] = logits[list(keep)] / temperature
    return torch.softmax(scaled, -1)


def assert_drawn_from(tokens, logprobs, probs, atol=0.02):
    """Exact support, frequencies within ``atol``, each log-probability that of the renormalised distribution."""
    assert set(tokens.tolist()) == set(torch.nonzero(probs).flatten().tolist())
    frequencies = torch.bincount(tokens, minlength=len(probs)).float() / len(tokens)
    torch.testing.assert_close(frequencies, probs, atol=atol, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[tokens], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_shapes_the_distribution(temperature):
    tokens, logprobs = draw(SamplingParams(temperature=temperature))
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    assert_drawn_from(tokens, logprobs, restricted(ALL, temperature))


@pytest.mark.parametrize(
    "params, keep",
    [
        (dict(top_k=1), {0}),
        (dict(top_k=2), {0, 1}),
        (dict(top_k=3), {0, 1, 2}),
        (dict(top_k=5), ALL),
        (dict(top_k=100), ALL),
        (dict(top_p=0.5), {0}),
        (dict(top_p=0.76), {0, 1}),  # p0 + p1 = 0.770
        (dict(top_p=0.78), {0, 1, 2}),
        (dict(top_p=1.0), ALL),
        (dict(min_p=0.4), {0}),
        (dict(min_p=0.3), {0, 1}),
        (dict(min_p=0.2), {0, 1, 2}),
        (dict(min_p=0.1), {0, 1, 2, 4}),
        (dict(top_k=3, top_p=0.78), {0, 1}),  # top-p of what top-k left: 0.628 + 0.231
        (dict(min_p=0.2, top_p=0.78), {0, 1}),
        (dict(temperature=2.0, min_p=0.4), {0, 1, 2}),  # min-p after temperature: / max = 1 .61 .47 .22 .37
        (dict(temperature=2.0, top_k=2), {0, 1}),
    ],
)
def test_filters_keep_their_tokens_in_proportion(params, keep):
    params = {"temperature": 1.0, **params}
    tokens, logprobs = draw(SamplingParams(**params))
    temperature = params["temperature"]
    assert_drawn_from(tokens, logprobs, restricted(keep, temperature))


def test_greedy_takes_the_argmax_with_the_models_logprob():
    logits = torch.stack([LOGITS, LOGITS.flip(0), torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0])])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1e-40), SamplingParams(temperature=0, top_k=3)]
    tokens, logprobs = sample_batch(logits, params, [None] * 3)
    assert tokens.tolist() == [0, 4, 2]
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1)[range(3), tokens])


def test_tiny_temperatures_are_greedy_and_finite_among_sampled_rows():
    logits = torch.stack([LOGITS * 30, LOGITS, LOGITS.flip(0) * 30])
    params = [
        SamplingParams(temperature=1e-40),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=GREEDY_EPS),
    ]
    tokens, logprobs = run(logits, params)
    assert tokens[0] == 0 and tokens[2] == 4
    assert torch.isfinite(logprobs).all()
    torch.testing.assert_close(logprobs[0], torch.log_softmax(logits[0], -1)[0])
    assert abs(float(logprobs[2])) < 1e-6  # GREEDY_EPS itself samples, from an all-but-one-hot distribution


def test_each_row_of_a_mixed_batch_keeps_its_own_parameters():
    kinds = [  # (params, the support on LOGITS)
        (SamplingParams(temperature=0), {0}),
        (SamplingParams(temperature=1.5, top_k=1), {0}),
        (SamplingParams(temperature=1.0, top_k=2), {0, 1}),
        (SamplingParams(temperature=0.7, min_p=0.2), {0, 1}),  # / max at 0.7: 1 .24 .12 .01 .06
        (SamplingParams(temperature=2.0), ALL),
        (SamplingParams(temperature=1.0, top_p=0.78), {0, 1, 2}),
        (SamplingParams(temperature=1e-40), {0}),
        (SamplingParams(temperature=0.5, top_k=3, top_p=0.9), {0, 1}),  # 0.5: .84 .11 .04
    ]
    n, every = 5000, len(kinds)
    logits = torch.stack([LOGITS.roll(k) for k in range(every)]).repeat(n, 1)  # each kind its own best token
    tokens, logprobs = run(logits, [params for params, _ in kinds] * n)
    for k, (params, keep) in enumerate(kinds):
        if params.greedy:
            assert set(tokens[k::every].tolist()) == {k % len(LOGITS)}
            torch.testing.assert_close(logprobs[k::every], torch.log_softmax(LOGITS, -1)[0].expand(n))
        else:
            assert_drawn_from(
                tokens[k::every], logprobs[k::every], restricted(keep, params.temperature).roll(k), atol=0.025
            )


BASE = torch.tensor([3.0, -2.0, 1.0, 2.0, 0.5])
PENALISED = [  # (params, prompt, output, BASE after the penalties)
    (dict(repetition_penalty=2.0), [0], [1], [1.5, -4.0, 1.0, 2.0, 0.5]),
    (dict(repetition_penalty=0.5), [], [4, 1], [3.0, -1.0, 1.0, 2.0, 1.0]),
    (
        dict(frequency_penalty=0.5, presence_penalty=0.25),
        np.array([3, 3, 3], np.int32),
        [0, 0, 0, 0, 3],
        [0.75, -2.0, 1.0, 1.25, 0.5],
    ),  # the prompt counts for neither
    (dict(), [0], [0, 0], BASE.tolist()),
    (
        dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
        [2],
        np.array([0, 0, 3], np.int32),
        [0.25, -2.0, 0.5, 0.25, 0.5],
    ),
]


def test_penalties_apply_to_the_rows_that_ask_for_them():
    logits = BASE.expand(len(PENALISED), -1).contiguous()
    params = [SamplingParams(temperature=0, **p) for p, *_ in PENALISED]
    tokens, logprobs = sample_batch(
        logits,
        params,
        [None] * len(params),
        [prompt for _, prompt, _, _ in PENALISED],
        [output for *_, output, _ in PENALISED],
    )
    expected = torch.tensor([e for *_, e in PENALISED])
    assert tokens.tolist() == expected.argmax(-1).tolist() == [3, 0, 3, 0, 2]
    torch.testing.assert_close(logprobs, torch.log_softmax(expected, -1)[range(len(PENALISED)), tokens])
    assert torch.equal(logits, BASE.expand(len(PENALISED), -1))


def test_sampled_rows_draw_from_the_penalised_logits():
    n = 10000
    penalised, prompt, output, expected = PENALISED[-1]
    tokens, logprobs = run(
        BASE.expand(n, -1).contiguous(),
        [SamplingParams(**penalised)] * n,
        prompt_ids=[prompt] * n,
        output_ids=[output] * n,
    )
    assert_drawn_from(tokens, logprobs, torch.softmax(torch.tensor(expected), -1))


def test_penalties_need_the_token_ids():
    with pytest.raises(ValueError, match="prompt_ids"):
        sample_batch(LOGITS[None], [SamplingParams(presence_penalty=1.0)], [None])


STEPS = torch.randn(30, 50, generator=torch.Generator().manual_seed(0)) * 2
SEEDED = SamplingParams(temperature=1.0, top_p=0.9, seed=7)


def seeded_tokens(batch_around) -> list[int]:
    """The tokens of a request seeded 7 over ``STEPS``, with ``batch_around(step)`` rows before and after it."""
    generator, tokens = torch.Generator().manual_seed(7), []
    for step, logits in enumerate(STEPS):
        before, after = batch_around(step)
        rows = before + [(logits, SEEDED, generator)] + after
        out, _ = sample_batch(torch.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows])
        tokens.append(int(out[len(before)]))
    return tokens


def test_a_seeded_request_does_not_depend_on_the_batch():
    other = torch.Generator().manual_seed(7)  # same seed, other request: must not share the stream
    alone = seeded_tokens(lambda step: ([], []))
    assert len(set(alone)) > 5
    assert seeded_tokens(lambda step: ([], [])) == alone

    def crowd(step):
        rows = [
            (STEPS[step].flip(0), SamplingParams(temperature=0.5), None),
            (STEPS[step], SamplingParams(temperature=0), None),
            (STEPS[step] * 3, SamplingParams(top_k=3, seed=7), other),
            (STEPS[step], SamplingParams(min_p=0.1, repetition_penalty=1.0), None),
        ]
        return rows[: step % 4], rows[step % 4 :]

    assert seeded_tokens(crowd) == alone


def test_a_non_finite_row_fails_alone():
    nan, inf = math.nan, math.inf
    bad = torch.tensor(
        [[nan] * 5, [2.0, nan, 0.0, 1.0, 0.0], [0.0, inf, 1.0, 0.0, 0.0], [-inf] * 5, [inf, -inf, 0, 0, 0]]
    )
    good = torch.stack([LOGITS, LOGITS.flip(0), LOGITS])
    everything = dict(temperature=0.8, top_k=3, top_p=0.9, min_p=0.05, repetition_penalty=1.2, frequency_penalty=0.5)
    bad_params = [
        SamplingParams(**everything),
        SamplingParams(temperature=0),
        SamplingParams(top_p=0.5),
        SamplingParams(**everything, seed=1),
        SamplingParams(temperature=0, presence_penalty=1.0),
    ]
    good_params = [SamplingParams(temperature=0), SamplingParams(seed=3, top_k=2), SamplingParams(top_k=2, top_p=0.95)]
    params = [p for pair in zip(bad_params, good_params + [None] * 2) for p in pair if p is not None]
    logits = torch.cat([bad, good])[[0, 5, 1, 6, 2, 7, 3, 4]]
    generators = [torch.Generator().manual_seed(3) if p.seed is not None else None for p in params]
    ids = [[0, 1]] * len(params)
    tokens, logprobs = run(logits, params, generators, prompt_ids=ids, output_ids=ids)

    assert tokens.shape == logprobs.shape == (8,)
    assert tokens[1] == 0 and float(logprobs[1]) == pytest.approx(float(torch.log_softmax(LOGITS, -1)[0]))
    seeded_alone, _ = sample_batch(LOGITS.flip(0)[None], [good_params[1]], [torch.Generator().manual_seed(3)])
    assert tokens[3] == seeded_alone[0] and tokens[3] in (4, 3)
    assert tokens[5] in (0, 1)
    assert torch.isfinite(logprobs[[1, 3, 5]]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_synchronisation_on_cuda():
    logits = torch.randn(6, 1000, device="cuda")
    params = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=50, top_p=0.9, min_p=0.05, seed=1),
        SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=0, presence_penalty=0.5),
        SamplingParams(top_p=0.8),
    ]
    generators = [torch.Generator("cuda").manual_seed(1) if p.seed is not None else None for p in params]
    ids = [np.arange(i, i + 20, dtype=np.int32) for i in range(6)]
    sample_batch(logits, params, generators, ids, ids)  # warm-up: first pinned allocation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tokens, logprobs = sample_batch(logits, params, generators, ids, ids)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert tokens.device == logprobs.device == logits.device
    assert tokens[0] == logits[0].argmax()
