"""The README's examples: every command line parses with its program's own parser, and the Python examples run
(offline, with the ImageNet checkpoint they load placed in the torch.hub cache) and give the shapes they state."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAMS = {"train": "train_seg", "train-det": "train_det", "eval": "eval_seg", "predict": "predict",
            "benchmark": "benchmark", "inspect": "inspect", "export": "export"}


def blocks(language: str):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands():
    """``(program, argv)`` for every ``dense-X ...`` or ``python -m tools.X ...`` line of the README."""
    found = []
    text = README.read_text()
    inline = [span for span in re.findall(r"`((?:dense-|python -m tools\.)[^`]*)`", text) if " --" in span]
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) + inline:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            match = re.match(r"(?:.*&& )?(?:dense-([\w-]+)|python -m tools\.(\w+))(.*)$", line)
            # "..." and [optional] parts are prose, not arguments
            if not match or "..." in line or "[" in line or "<" in line.replace("<name>", ""):
                continue
            program = PROGRAMS.get(match.group(1)) if match.group(1) else match.group(2)
            if program not in PROGRAMS.values():  # prose such as "each dense-X command"
                continue
            found.append((program, shlex.split(match.group(3).replace("<name>", "run"))))
    return found


def parse(program: str, argv):
    module = __import__(f"tools.{program}", fromlist=["x"])
    if program in ("train_seg", "train_det"):
        from tools.engine.config import parse_config

        return parse_config(module.build_parser(), argv)
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args(argv)
    return module.parse_args(argv)


def test_the_readme_has_commands_of_every_program():
    assert {p for p, _ in commands()} == set(PROGRAMS.values())


@pytest.mark.parametrize("program, argv", commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:60])
def test_readme_command_parses(program, argv, monkeypatch):
    monkeypatch.chdir(README.parent)  # --config configs/... is relative to the checkout
    parse(program, argv)


def test_readme_python_examples_run(hub_dir, randomize):
    import torchvision

    from backbones.weights import cached_path_for_url, torchvision_url

    path = cached_path_for_url(torchvision_url("resnet50"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(randomize(torchvision.models.resnet50(weights=None)).state_dict(), path)
    quick_start, more = blocks("python")[:2]
    scope: dict = {}
    exec(compile(quick_start, "README quick start", "exec"), scope)
    assert [tuple(f.shape) for f in (scope["f8"], scope["f16"], scope["f32"])] == [
        (2, 128, 13, 17), (2, 256, 7, 9), (2, 512, 7, 9)]
    assert scope["bb"].size_divisibility == 16
    assert str(scope["bb"].feature_info) in quick_start
    assert tuple(scope["logits"].shape) == (1, 21, 512, 1024)
    exec(compile(more, "README detection/smp/timm examples", "exec"), scope)
    assert str(scope["bb"].feature_info) in more
    found = scope["found"]
    assert set(found) == {"boxes", "scores", "labels"} and found["boxes"].shape[1:] == (4,)
    assert found["scores"].shape == found["labels"].shape == found["boxes"].shape[:1]


def pipeline_blocks():
    """The Python examples of the README's "Use in other pipelines" section."""
    section = README.read_text().split("\n## Use in other pipelines\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def stated_values(block: str):
    """``(expression, value)`` for every line ``<expression>   # <literal>`` of ``block``, e.g.
    ``x.shape   # (1, 5)``; assignments and comments that are no Python literal are skipped."""
    import ast

    found = []
    for line in block.splitlines():
        match = re.match(r"^(\S.*?)\s+#\s*([\(\[].*?[\)\]])(?::.*)?$", line)
        if not match or re.match(r"^\w+ = ", match.group(1)):
            continue
        try:
            found.append((match.group(1), ast.literal_eval(match.group(2))))
        except (ValueError, SyntaxError):  # prose such as "(K, 4)"
            pass
    return found


@pytest.mark.parametrize("block", pipeline_blocks(), ids=["torchvision", "smp", "hf", "openmmlab"])
def test_readme_pipeline_examples_run_and_give_the_values_they_state(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # save_pretrained writes its folder here
    scope: dict = {}
    exec(compile(block, "README pipeline example", "exec"), scope)
    stated = stated_values(block)
    assert stated, "each example states what it returns"
    for expression, value in stated:
        got = eval(expression, scope)
        assert (tuple(got) if isinstance(got, torch.Size) else got) == value, expression
    if "same" in scope:  # the Hugging Face round trip
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(scope["same"].eval()(x).logits, scope["upernet"].eval()(x).logits)
