"""Every ```python block of the README runs, in order, in one namespace (like a notebook): the
examples cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 5


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples may write files (the search's cache)
    namespace: dict = {"__name__": "readme"}
    for index, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - name the block that broke
            raise AssertionError(f"README python block {index + 1} failed: {exc!r}\n{block}") from exc


def test_top_level_api_names_resolve_and_import_lowbit_stays_light():
    import subprocess
    import sys

    code = ("import sys, lowbit; assert 'torch' not in sys.modules, 'import lowbit pulled in torch'; "
            "missing = [n for n in lowbit.__all__ if getattr(lowbit, n, None) is None]; "
            "assert not missing, missing; "
            "import lowbit.search as s; assert 'stable_baselines3' not in sys.modules; "
            "assert callable(s.releq_search); from lowbit.reg import SinReQ, waveq_quantize; "
            "from lowbit.distill import dcq_quantize")
    subprocess.run([sys.executable, "-c", code], check=True)
    import lowbit

    with pytest.raises(AttributeError, match="no attribute 'quantise_'"):
        lowbit.quantise_  # noqa: B018
