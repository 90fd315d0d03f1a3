"""The README's Python and the examples run as written; those that talk to a server run against a
real one (the default model, on a free port, instead of the documented default address)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from radixrt.client import DEFAULT_ADDRESS
from radixrt.server.launch import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


HTTP_ADDRESS = "http://127.0.0.1:8000"  # the README's HTTP example


def needs_server(code: str) -> bool:
    return "Client(" in code or "OpenAI(" in code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(
        ["--threads", "1", "--http-port", "0", "--api-key", "sk-local"],
        tmp_path_factory.mktemp("docs") / "serve.log",
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    ) as served:
        yield served


@pytest.mark.parametrize("code", readme_blocks())
def test_readme_python_runs(code, request):
    if needs_server(code):
        served = request.getfixturevalue("server")
        code = code.replace(DEFAULT_ADDRESS, served.address).replace(HTTP_ADDRESS, served.http_url)
    exec(compile(code, "README.md", "exec"), {})


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_example_runs(example, request):
    args = [request.getfixturevalue("server").address] if needs_server(example.read_text()) else []
    out = subprocess.run(
        [sys.executable, str(example), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert out.returncode == 0, out.stderr
