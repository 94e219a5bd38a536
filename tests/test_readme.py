"""The README's Quick start and Integrations examples run verbatim, in order, in one namespace.

The learning examples (``s4s.learn`` on a real model) take minutes of CPU and are not executed
here; the learner itself is tested in test_learn.py and through the CLI in test_eval.py.
"""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_quick_start_and_integrations_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files (solver JSON, a pipeline folder)
    namespace: dict = {}
    blocks = _python_blocks("Quick start") + _python_blocks("Integrations")[:1]
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    x0, images, same, x0_ve = (namespace[k] for k in ("x0", "images", "same", "x0_ve"))
    assert x0.shape == (4, 1, 28, 28) and bool(torch.isfinite(x0).all())
    assert len(images) == 2 and images[0].size == (28, 28)
    assert torch.equal(same.solver.tables.b, namespace["solver"].tables.b)
    assert x0_ve.shape == (2, 1, 28, 28) and bool(torch.isfinite(x0_ve).all())
    assert (tmp_path / "dpmpp3m-5.json").is_file() and (tmp_path / "my-pipe" / "model_index.json").is_file()
