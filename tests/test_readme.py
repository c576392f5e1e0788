"""The README stays true: its component example runs, and its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_component_example_runs(capsys):
    text = README.read_text()
    block = re.search(r"<!-- example: components -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its component example"
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)
    assert scope["codes"].shape == (2, 8, 50) and scope["frames"].tolist() == [50, 25]
    assert scope["streams"].shape == (2, 8, 57)
    assert scope["hidden"].shape == (1, 10, 64)
    assert isinstance(scope["hidden"], torch.Tensor)


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in text and 'pip install -e ".[dev]"' in ci
    assert "\npytest\n" in text and "\npytest\n" in ci
    assert "python -m recipes.bagpiper fit --config recipes/configs/demo.yaml" in text
    for config in re.findall(r"recipes/configs/[\w/]+\.yaml", text):
        assert (README.parent / config).is_file(), config
