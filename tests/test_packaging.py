"""The CPU path runs without triton (which is installed on Linux only), and a client process loads
neither torch nor transformers."""
import subprocess
import sys
import textwrap

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
        from radixrt.engine import GenerateOutput, RequestFailed
        heavy = [m for m in ("torch", "transformers") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


def test_every_package_is_installed():
    """pyproject lists every folder of radixrt/ with Python files, so a non-editable install has them all."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(root).parts) for p in (root / "radixrt").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert folders <= listed, sorted(folders - listed)
    assert all((root / p.replace(".", "/") / "__init__.py").exists() for p in folders)
