"""The CPU path runs without triton (which is installed on Linux only), and a client process loads
neither torch nor transformers."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from radixrt.model.loader import default_gguf


def test_the_engine_runs_without_triton(tmp_path):
    default_gguf()  # installed by make setup
    script = textwrap.dedent("""
        import importlib.abc, sys

        class NoTriton(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
                return None

        sys.meta_path.insert(0, NoTriton())
        from radixrt import Engine, SamplingParams
        out = Engine().generate("The capital of France is", SamplingParams(max_new_tokens=4, temperature=0))
        assert "triton" not in sys.modules and len(out.token_ids) == 4, out
        print("ok", out.text)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


def test_a_client_imports_neither_torch_nor_transformers():
    script = textwrap.dedent("""
        import sys
        from radixrt import SamplingParams
        from radixrt.client import AsyncClient, Client
        from radixrt.outputs import GenerateOutput, RequestFailed
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_installed():
    """pyproject lists every folder of radixrt/ with Python files, so a non-editable install has them all;
    each is a package but ``radixrt.kernels``, the link to the top-level ``kernels/`` folder."""
    import tomllib  # Python 3.11

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "radixrt").rglob("*.py")
        if "__pycache__" not in p.parts
    } | {"radixrt.kernels"}
    assert folders <= listed, sorted(folders - listed)
    assert all((ROOT / p.replace(".", "/") / "__init__.py").exists() for p in folders - {"radixrt.kernels"})
    assert (ROOT / "radixrt" / "kernels").resolve() == ROOT / "kernels"


def test_the_kernels_folder_shadows_no_package(tmp_path):
    """With the repository root first on ``sys.path`` (``python -m pytest`` and ``python -m radixrt`` put
    it there), ``import kernels`` still finds an installed package of that name (transformers 5.25
    imports the PyPI package ``kernels``), and ``radixrt.kernels`` is the project's folder."""
    installed = tmp_path / "site" / "kernels"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("class CUDAProperties:\n    pass\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.append({str(installed.parent)!r})  # after the root, as site-packages is
        from kernels import CUDAProperties
        import kernels
        from transformers import LlamaConfig
        import radixrt.kernels.attention
        assert not kernels.__file__.startswith({str(ROOT)!r} + "/kernels"), kernels.__file__
        assert radixrt.kernels.attention.__file__ == {str(ROOT / "radixrt" / "kernels" / "attention.py")!r}
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, "-m", "radixrt", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "serve" in run.stdout, run.stderr[-3000:]


def test_nothing_imports_the_kernels_folder_as_a_top_level_package():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("radixrt", "kernels", "tests", "bench", "examples")
        for p in (ROOT / folder).rglob("*.py")
        if "radixrt/kernels" not in str(p.relative_to(ROOT))
        and re.search(r"^\s*(from kernels\b|import kernels\b)", p.read_text(), re.M)
    ]
    assert offenders == ["tests/test_packaging.py"], offenders  # this file, in the script above
