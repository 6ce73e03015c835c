"""Checkpoint loading for backbones: local files or URLs (torch.hub cache), torchvision- and timm-format.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors, so a file that needs code to
unpickle is refused rather than executed. Every key and shape is checked *before* any tensor is copied, so a
bad checkpoint leaves the model exactly as it was.
"""

from __future__ import annotations

import os
import pickle
import re
import urllib.error
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["WEIGHT_URLS", "load_state_dict_file", "load_pretrained", "resolve_weights", "cached_path_for_url",
           "state_dict_mismatches"]

# torchvision's ImageNet weights (IMAGENET1K_V1): the file names end in the SHA-256 prefix torch.hub checks.
WEIGHT_URLS: Dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}

# Wrappers that training frameworks put around a state dict, and prefixes they add to its keys.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "net", "params")
_KEY_PREFIXES = ("module.", "backbone.", "encoder.", "model.")

_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def cached_path_for_url(url: str) -> Path:
    """Where torch.hub keeps (or expects) the file for ``url``: ``<hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def resolve_weights(source: Union[str, os.PathLike], *, progress: bool = True) -> Path:
    """Local path of ``source``: the file itself, or the torch.hub cache entry of a URL (downloading once).

    Raises:
        FileNotFoundError: a local path that does not exist.
        ConnectionError: a URL that cannot be reached; the message names the URL and the cache path where
            the file can be placed by hand.
    """
    text = os.fspath(source)
    if not re.match(r"^[a-z][a-z0-9+.-]*://", text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {str(path)!r}")
        return path
    cached = cached_path_for_url(text)
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(cached.name)
    try:
        # download_url_to_file writes to a temporary file and renames it, so a failed download leaves nothing.
        torch.hub.download_url_to_file(text, str(cached), hash_prefix=match.group(1) if match else None,
                                       progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise ConnectionError(
            f"could not download pretrained weights from {text} ({e}). Without network access, download the "
            f"file elsewhere and place it at {cached} (or pass its local path as pretrained=...)."
        ) from e
    except RuntimeError as e:  # hash mismatch
        raise ValueError(f"downloaded weights from {text} are corrupt: {e}") from e
    return cached


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` (weights only) or ``.safetensors`` checkpoint into a flat ``{key: tensor}``."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: the file is empty")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only raises UnpicklingError both for a pickle that names a class or function (code to run)
        # and for bytes that are no pickle at all; only the first deserves the "needs code" explanation.
        needed = re.search(r"GLOBAL (\S+)", str(e))
        if needed:
            raise ValueError(
                f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint; unpickling it would run "
                f"code ({needed.group(1)}), which weights_only=True forbids. Re-save it as a state dict: "
                f"torch.save(model.state_dict(), path)"
            ) from e
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: it is corrupt or not a PyTorch checkpoint "
            f"({_last_line(str(e))})"
        ) from e
    except Exception as e:  # truncated or not a checkpoint at all
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {_last_line(str(e))}") from e
    return _flatten(obj, str(path))


def _last_line(text: str) -> str:
    # torch's loader messages end with the specific cause after paragraphs of generic advice.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "documentation" not in ln]
    return lines[-1] if lines else "no details"


def _flatten(obj: object, where: str) -> Dict[str, torch.Tensor]:
    for key in _CONTAINER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"checkpoint {where!r} holds no state dict (got {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"checkpoint {where!r} holds no tensors")
    for prefix in _KEY_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _adapt_to_model(sd: Dict[str, torch.Tensor], model: nn.Module) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Drop what a backbone legitimately lacks: the classifier, stages it does not build, BN statistics.

    Returns the state dict to load and the layers whose running mean/variance the model has no place for (a
    GroupNorm model fed BatchNorm weights); frozen BN keeps them, so only its step counter is dropped.
    """
    target = model.state_dict()
    built = {k.split(".")[0] for k in target}
    out, unused_stats = {}, []
    for k, v in sd.items():
        top = k.split(".")[0]
        if top == "fc":
            continue
        if re.fullmatch(r"layer[1-4]", top) and top not in built:
            continue  # stage deeper than the requested outputs: intentionally not built
        if k not in target and k.rsplit(".", 1)[-1] in ("num_batches_tracked", "running_mean", "running_var"):
            if k.endswith(".running_mean"):
                unused_stats.append(k[:-len(".running_mean")])
            continue  # statistics a frozen or group norm does not keep
        out[k] = v
    return out, unused_stats


def short_names(names: Sequence[str], limit: int = 8) -> str:
    """``"a, b ... (+3 more)"``: the first ``limit`` names, for error messages about many keys or layers."""
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit} more)" if len(names) > limit else "")


def state_dict_mismatches(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, limit: int = 8
                          ) -> Optional[str]:
    """Missing keys, unexpected keys and shape mismatches of ``state_dict`` against ``model``, in one line.

    Returns ``None`` when ``model.load_state_dict(state_dict, strict=True)`` would succeed; checking first lets
    callers refuse a checkpoint before any tensor is copied.
    """
    target = model.state_dict()
    missing = sorted(set(target) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(target))
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in state_dict if k in target and state_dict[k].shape != target[k].shape]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
        if items:
            parts.append(f"{len(items)} {label}: {short_names(items, limit)}")
    return "; ".join(parts) or None


def load_pretrained(model: nn.Module, source: Union[bool, str, os.PathLike], *, arch: Optional[str] = None,
                    progress: bool = True) -> nn.Module:
    """Load a torchvision- or timm-format checkpoint into ``model``, all or nothing.

    Args:
        model: the backbone to load into.
        source: ``True`` / ``"imagenet"`` (torchvision's weights for ``arch``), a local path or a URL.
        arch: registered name, used to find the default URL.

    Raises:
        ValueError: missing or unexpected keys or shape mismatches, listed together; the model is unchanged.
    """
    if source is True or source in ("imagenet", "torchvision"):
        if arch not in WEIGHT_URLS:
            raise ValueError(f"no default weights for {arch!r}; available for: {', '.join(WEIGHT_URLS)}")
        source = WEIGHT_URLS[arch]
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"pretrained must be True, 'imagenet', a path or a URL, got {source!r}")
    path = resolve_weights(source, progress=progress)
    sd, unused_stats = _adapt_to_model(load_state_dict_file(path), model)
    problems = state_dict_mismatches(model, sd)
    if problems:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}"
            f"{f' ({arch})' if arch else ''}; expected a torchvision/timm ResNet state dict. {problems}"
        )
    model.load_state_dict(sd, strict=True)
    if unused_stats:
        # Loading BN weights into GN is a common initialisation (mmdet/mmseg do it with a log line), but the
        # layers then normalise with different statistics than the ones the weights were trained with.
        warnings.warn(
            f"checkpoint {str(path)!r} holds BatchNorm running statistics for {len(unused_stats)} layers "
            f"({short_names(unused_stats, 3)}) that this model's "
            f"normalisation does not keep; only their affine weight and bias were loaded. Use weights trained "
            f"with the same norm layer for outputs that match the checkpoint's.", UserWarning, stacklevel=2)
    return model
