"""Engines on a tiny random checkpoint (fast) and on the default model, shared by the engine tests."""

import pytest

from radixrt import Engine
from radixrt.engine.core import EngineCore
from testkit.engines import tiny_llama


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A 2-layer random Llama without a tokenizer (token ids only)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def default_engine() -> Engine:
    return Engine(page_size=16)


@pytest.fixture(params=["plain", "overlap"])
def scheduling(request, monkeypatch) -> str:
    """Engines made in the test schedule plainly (collect each step before the next) or with the
    overlap scheduler (queue step k+1, then collect step k), as on a GPU; on a CPU both run the
    same code path, so every guarantee the test checks must hold in both."""
    if request.param == "overlap":
        init = EngineCore.__init__

        def overlapped(self, *args, overlap: bool = True, **kwargs) -> None:
            init(self, *args, overlap=overlap, **kwargs)

        monkeypatch.setattr(EngineCore, "__init__", overlapped)
    return request.param
