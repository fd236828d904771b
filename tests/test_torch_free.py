"""The runtime and ``sleepnas data info`` run without torch (checked in a fresh interpreter).

A meta-path finder makes ``import torch`` fail in the child process, so any import
of torch, direct or through another package, breaks the command under test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.edffiles import cassette_dir  # noqa: F401  (fixture)

_BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")

RUNTIME_MODULES = ["channels", "edf", "errors", "metrics", "recordings", "signals", "spec", "splits",
                   "stages", "store", "utils"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_TORCH + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_blocker_blocks_torch():
    result = _run("import torch")
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_runtime_module_imports_without_torch(module):
    result = _run(f"""
        import sleepnas.runtime.{module}
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr


def test_all_runtime_modules_without_torch():
    """Import every module of the runtime package, including ones added later."""
    result = _run("""
        import pkgutil, sleepnas.runtime
        for info in pkgutil.iter_modules(sleepnas.runtime.__path__):
            __import__("sleepnas.runtime." + info.name)
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr


def test_data_info_without_torch(cassette_dir):
    result = _run(f"""
        from sleepnas.tools.cli import main
        try:
            main(["data", "info", {str(cassette_dir)!r}, "--json", "--trim-wake-min", "2"])
        except SystemExit as exit:
            assert not exit.code, exit.code
        assert "torch" not in sys.modules
        assert "sleepnas.runtime.recordings" in sys.modules
    """)
    assert result.returncode == 0, result.stderr
    assert '"recordings": 3' in result.stdout


def test_cohort_loads_without_torch(cassette_dir, tmp_path):
    result = _run(f"""
        from sleepnas.runtime.spec import WindowSpec
        from sleepnas.runtime.store import load_cohort
        cohort = load_cohort({str(cassette_dir)!r}, WindowSpec(), cache_dir={str(tmp_path)!r},
                             trim_wake_min=2.0)
        assert cohort.windows.shape == (72, 7, 3000), cohort.windows.shape
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
