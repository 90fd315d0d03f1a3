import math

import pytest
import torch

from radixrt.engine.sampling import SamplingParams, apply_penalties, sample


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=math.nan), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(presence_penalty=-2.5), "presence_penalty"),
        (dict(stop=("",)), "stop"),
        (dict(stop_token_ids=(5, 100)), "outside the vocabulary"),
    ],
)
def test_impossible_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**params).validate(vocab_size=100)


def test_unknown_keys_from_a_message_are_refused():
    with pytest.raises(ValueError, match="unknown sampling parameter.*temprature"):
        SamplingParams.from_dict({"temprature": 0.5}).validate(100)
    assert SamplingParams.from_dict({"stop": "x", "max_new_tokens": 3}) == SamplingParams(max_new_tokens=3, stop=("x",))


LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])


def draw(params: SamplingParams, n: int = 4000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.tensor([sample(LOGITS.clone(), params, gen)[0] for _ in range(n)])


def test_greedy_and_its_logprob():
    token, logprob = sample(LOGITS.clone(), SamplingParams(temperature=0), None)
    assert token == 0 and abs(logprob - float(torch.log_softmax(LOGITS, -1)[0])) < 1e-6


@pytest.mark.parametrize("params", [dict(top_k=1), dict(top_p=0.01), dict(min_p=0.9)])
def test_filters_that_leave_only_the_best_token(params):
    assert set(draw(SamplingParams(temperature=1.5, **params), 200).tolist()) == {0}


def test_top_k_keeps_the_k_best_in_proportion():
    counts = torch.bincount(draw(SamplingParams(temperature=1.0, top_k=2)), minlength=5).float()
    assert counts[2:].sum() == 0
    expected = torch.softmax(LOGITS[:2], -1)
    assert torch.allclose(counts[:2] / counts.sum(), expected, atol=0.03)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, -1)  # 0.53, 0.19, 0.12, 0.03, 0.07 (rounded)
    p = float(probs[0] + probs[1]) - 0.01  # needs the two best
    assert set(draw(SamplingParams(temperature=1.0, top_p=p), 500).tolist()) == {0, 1}


def test_seeded_draws_repeat():
    params = SamplingParams(temperature=1.0, seed=3)
    assert draw(params, 50).tolist() == draw(params, 50).tolist()


def test_penalties():
    logits = torch.tensor([2.0, -2.0, 1.0, 1.0])
    out = apply_penalties(logits.clone(), torch.tensor([0, 1]), torch.zeros(4), SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 1.0, 1.0]
    counts = torch.tensor([0.0, 0.0, 3.0, 1.0])
    out = apply_penalties(logits.clone(), torch.tensor([], dtype=torch.long), counts,
                          SamplingParams(frequency_penalty=0.5, presence_penalty=0.25))
    assert out.tolist() == [2.0, -2.0, 1.0 - 1.5 - 0.25, 1.0 - 0.5 - 0.25]
