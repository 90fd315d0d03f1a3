"""Engines on a tiny random checkpoint (fast) and on the default model, shared by the engine tests."""

import pytest

from radixrt import Engine
from testkit.engines import tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A 2-layer random Llama without a tokenizer (token ids only)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def default_engine() -> Engine:
    return Engine(page_size=16)
