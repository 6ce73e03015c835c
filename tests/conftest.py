"""Shared fixtures: deterministic seeds, an isolated torch.hub cache and registry, reference checkpoints.

No test downloads anything: reference weights come from torchvision/timm models built here with random
weights (and randomized BatchNorm statistics, so a mix-up of BN buffers cannot hide behind mean 0 / var 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, deterministically; returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                m.num_batches_tracked.fill_(7)
    return model


@pytest.fixture
def randomize() -> Callable[..., nn.Module]:
    """``randomize(model, seed=0)``: random BatchNorm statistics and affine parameters."""
    return randomize_norms


def save_state_dict(sd: Dict[str, torch.Tensor], path: Path) -> Path:
    """Save ``sd`` as ``.safetensors`` or with ``torch.save``, by the suffix of ``path``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.fixture
def tv_checkpoint(tmp_path: Path) -> Callable[..., tuple]:
    """``tv_checkpoint(arch, suffix=".pth", **tv_kwargs) -> (torchvision model in eval, checkpoint path)``.

    The checkpoint is the model's full state dict, classifier (``fc.*``) and ``num_batches_tracked`` included,
    as torchvision publishes it.
    """
    import torchvision

    def make(arch: str, suffix: str = ".pth", **tv_kwargs) -> tuple:
        model = randomize_norms(getattr(torchvision.models, arch)(weights=None, **tv_kwargs)).eval()
        return model, save_state_dict(model.state_dict(), tmp_path / f"{arch}{suffix}")

    return make


@pytest.fixture
def hub_dir(tmp_path: Path):
    """Point torch.hub's cache at an empty temporary directory for the test, then restore it."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch):
    """An empty Hugging Face cache in offline mode (``HF_HUB_OFFLINE``), for the test only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def place_in_hf_cache(cache: Path, repo_id: str, files: Dict[str, Path], revision: str = "0" * 40) -> Path:
    """Lay ``files`` (name in the repository -> local file) out as huggingface_hub caches a download of
    ``repo_id`` at commit ``revision`` (blobs, a snapshot of links, ``refs/main``); returns the snapshot."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        blob = repo / "blobs" / f"{name}.blob"
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def isolated_backbones():
    """Let a test register backbones without leaking them into the global registry."""
    from backbones.registry import BACKBONES

    saved = dict(BACKBONES._builders)
    yield BACKBONES
    BACKBONES._builders.clear()
    BACKBONES._builders.update(saved)


# Modules that load ONNX Runtime / OpenVINO (or run the benchmark) into the test process carry the ``engines``
# mark, and the README's test command runs them in a pytest process of their own: in one process with the
# DataLoader-worker tests the process crashed with SIGSEGV, in either order.
_ENGINE_MODULES = ("test_benchmark.py", "test_runners.py", "test_quantize.py", "test_export.py",
                   "test_eval_predict.py", "test_det_export.py")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "engines: loads ONNX Runtime/OpenVINO; run in its own process "
                                       "(python -m pytest -m engines)")


def pytest_collection_modifyitems(session, config, items) -> None:
    for item in items:
        if item.path.name in _ENGINE_MODULES:
            item.add_marker(pytest.mark.engines)
