"""Checkpoint loading for backbones: local files, URLs (torch.hub cache), torchvision's ImageNet weights and
timm's (Hugging Face cache), all in torchvision's parameter names.

``pretrained=`` accepts ``True``/``"imagenet"`` (torchvision IMAGENET1K_V1), ``"tv2"`` (torchvision
IMAGENET1K_V2, for the models that have it), ``"timm:<model>.<tag>"`` (timm's weights, e.g.
``"timm:resnet50.a1_in1k"``), a URL or a local path. Without network access, a file not yet cached fails at once
with the path to place it at.

Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors, so a file that needs code to
unpickle is refused rather than executed. Every key and shape is checked *before* any tensor is copied, so a
bad checkpoint leaves the model exactly as it was. A model built for ``in_chans != 3`` gets the RGB checkpoint's
first convolution adapted to its input channels (:func:`adapt_input_conv`, timm's rule), said in one log line.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import socket
import urllib.error
import urllib.parse
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .registry import UsageError

__all__ = ["WEIGHT_URLS", "TORCHVISION_SOURCES", "load_state_dict_file", "load_pretrained", "pretrained_file",
           "resolve_weights", "cached_path_for_url", "torchvision_url", "timm_weights_file", "hf_weights_file",
           "hf_cached_file", "hf_snapshot_dir", "hub_unreachable", "load_checked", "state_dict_mismatches",
           "adapt_input_conv", "input_conv_name"]

logger = logging.getLogger(__name__)

# torchvision's ImageNet weights (IMAGENET1K_V1): the file names end in the SHA-256 prefix torch.hub checks.
WEIGHT_URLS: Dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}

# pretrained= names for torchvision's weights of the backbone's own architecture: the members of torchvision's
# weights enum. "imagenet" stays V1, the weights most dense-prediction papers start from.
TORCHVISION_SOURCES: Dict[str, str] = {"imagenet": "IMAGENET1K_V1", "torchvision": "IMAGENET1K_V1",
                                       "tv2": "IMAGENET1K_V2"}
TIMM_PREFIX = "timm:"
# What timm publishes per weight tag on the Hugging Face hub, in the order timm itself tries them.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

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


def pretrained_file(source: Union[bool, str, os.PathLike], *, arch: Optional[str] = None,
                    progress: bool = True) -> Path:
    """Local file for a ``pretrained=`` value, downloaded into the torch.hub or Hugging Face cache once.

    Args:
        source: ``True``/``"imagenet"``, ``"tv2"`` (see :data:`TORCHVISION_SOURCES`), ``"timm:<model>.<tag>"``,
            a URL or a local path.
        arch: the backbone's architecture (``"resnet50"``, or a torchvision/timm model name), which the named
            sources are looked up for.

    Raises:
        ValueError: a named source that does not exist for ``arch``. ConnectionError: not cached and offline.
    """
    if source is True:
        source = "imagenet"
    if isinstance(source, bool) or not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"pretrained must be True, 'imagenet', 'tv2', 'timm:<model>.<tag>', a path or a URL, "
                        f"got {source!r}")
    text = os.fspath(source)
    if text in TORCHVISION_SOURCES:
        return resolve_weights(torchvision_url(arch, TORCHVISION_SOURCES[text]), progress=progress)
    if text.startswith(TIMM_PREFIX):
        return timm_weights_file(text[len(TIMM_PREFIX):], arch=arch)
    if re.fullmatch(r"[\w-]+", text) and not Path(text).is_file():  # a bare word: a misspelt name, not a path
        raise ValueError(f"unknown pretrained source {text!r}; accepted: True, "
                         f"{', '.join(map(repr, TORCHVISION_SOURCES))}, 'timm:<model>.<tag>', a path or a URL")
    return resolve_weights(text, progress=progress)


def torchvision_url(arch: Optional[str], tag: str = "IMAGENET1K_V1") -> str:
    """URL of torchvision's ``tag`` weights (a member of its weights enum) for model ``arch``."""
    if tag == "IMAGENET1K_V1" and arch in WEIGHT_URLS:
        return WEIGHT_URLS[arch]
    import torchvision

    try:
        available = {w.name: w.url for w in torchvision.models.get_model_weights(arch)}
    except (ValueError, TypeError, AttributeError):  # not a torchvision model
        available = {}
    if not available:
        raise ValueError(f"no default weights for {arch!r}; available for: {', '.join(WEIGHT_URLS)} and "
                         f"torchvision's other ResNets")
    if tag not in available:
        names = {v: k for k, v in TORCHVISION_SOURCES.items() if k != "torchvision"}
        have = ", ".join(f"{n} (pretrained={names[n]!r})" if n in names else n for n in available)
        raise ValueError(f"torchvision has no {tag} weights for {arch!r}, only {have}; timm has more, e.g. "
                         f"pretrained='{TIMM_PREFIX}{arch}.a1_in1k'")
    return available[tag]


def timm_weights_file(name: str, *, arch: Optional[str] = None) -> Path:
    """File of timm's weights ``name`` (``"resnet50.a1_in1k"``; no tag: timm's default), from the Hugging Face
    cache (downloaded once from the repository timm names, ``timm/resnet50.a1_in1k``).

    Args:
        arch: the model the weights are for; a different timm model is refused before anything is downloaded.
    """
    import timm
    from timm.models import split_model_name_tag

    model = split_model_name_tag(name)[0]
    if arch is not None and model != arch:
        raise ValueError(f"pretrained='{TIMM_PREFIX}{name}' holds weights of timm's {model!r}, not of {arch!r}; "
                         f"for {arch!r} timm has: {short_names(timm.list_pretrained(arch + '.*'), 12) or 'none'}")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a known model with an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        known = short_names(timm.list_pretrained(model + ".*"), 12)
        raise ValueError(f"timm has no pretrained weights {name!r}; for {model!r} it has: {known or 'none'}")
    if not cfg.hf_hub_id:
        return resolve_weights(cfg.url)
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
    return hf_weights_file(repo, names, revision=revision or None)


def hf_weights_file(repo_id: str, filenames: Sequence[str] = HF_WEIGHT_FILES, *,
                    revision: Optional[str] = None) -> Path:
    """The first of ``filenames`` that Hugging Face repository ``repo_id`` holds, from the Hugging Face cache
    (``huggingface_hub``'s layout; downloaded once).

    Offline (``HF_HUB_OFFLINE=1``, or the hub cannot be reached) a file not cached fails at once, where
    ``huggingface_hub`` would retry for half a minute.

    Raises:
        ConnectionError: not cached and offline; the message names the URL and the path to place the file at.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    cached = hf_cached_file(repo_id, filenames, revision=revision)
    if cached is not None:
        return cached
    unreachable = hub_unreachable()
    if unreachable:
        raise ConnectionError(
            f"pretrained weights {repo_id} are not in the Hugging Face cache and {unreachable}. Download "
            f"{hf_url(repo_id, filenames[0], revision)} elsewhere and place it at "
            f"{hf_snapshot_dir(repo_id, revision) / filenames[0]} (or pass its local path as pretrained=...)."
        )
    for name in filenames[:-1]:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision))
        except EntryNotFoundError:  # the repository has the next format only
            pass
    return Path(hf_hub_download(repo_id, filenames[-1], revision=revision))


def hf_cached_file(repo_id: str, filenames: Sequence[str], *, revision: Optional[str] = None) -> Optional[Path]:
    """The first of ``filenames`` in the Hugging Face cache entry of ``repo_id``, without network; ``None`` if
    none is there. Files placed by hand where :func:`hf_snapshot_dir` says count too."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=True))
        except EntryNotFoundError:  # LocalEntryNotFoundError included
            pass
    # huggingface_hub finds an unpinned revision through refs/<revision>, which a file placed by hand lacks.
    snapshots = hf_snapshot_dir(repo_id, revision).parent
    for name in filenames:
        placed = sorted(snapshots.glob(f"{revision or '*'}/{name}"), key=lambda p: p.stat().st_mtime)
        if placed:
            return placed[-1]
    return None


def hf_snapshot_dir(repo_id: str, revision: Optional[str] = None) -> Path:
    """The folder of the Hugging Face cache where the files of ``repo_id`` at ``revision`` are (or go)."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
            / (revision or "main"))


def hf_url(repo_id: str, filename: str, revision: Optional[str] = None) -> str:
    """Download address of ``filename`` in Hugging Face repository ``repo_id`` (for messages)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}/resolve/{revision or 'main'}/{filename}"


def hub_unreachable() -> Optional[str]:
    """Why the Hugging Face hub cannot be reached (offline mode, no route), or ``None`` if it may be."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let huggingface_hub try
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as e:
        return f"{url.hostname}:{port} cannot be reached ({e})"
    return None


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


def adapt_input_conv(weight: torch.Tensor, *, in_chans: int) -> torch.Tensor:
    """Pretrained first-convolution weights ``(O, C, kh, kw)`` refitted to ``in_chans`` input channels, as timm
    refits them (``timm.models.adapt_input_conv``).

    One channel sums the pretrained ones: a grey image is an RGB image with R = G = B, so the sum gives it the
    response the RGB weights give that image. ``N`` channels repeat the pretrained ones cyclically (R, G, B, R...)
    and scale them by ``C / N``, which keeps the response to an input whose channels are all equal.

    Returns:
        a tensor of shape ``(O, in_chans, kh, kw)`` and the weight's dtype (computed in float32).
    """
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
    if weight.dim() != 4:
        raise ValueError(f"adapt_input_conv expects a (O, C, kh, kw) convolution weight, got shape "
                         f"{tuple(weight.shape)}")
    source = weight.shape[1]
    if in_chans == source:
        return weight
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / source), 1, 1)[:, :in_chans] * (source / in_chans)
    return w.to(weight.dtype)


def input_conv_name(model: nn.Module) -> Optional[str]:
    """Qualified name of the first ``nn.Conv2d`` of ``model`` (its input convolution), ``None`` if it has none."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _adapt_input_channels(sd: Dict[str, torch.Tensor], model: nn.Module) -> Optional[str]:
    """Refit an RGB checkpoint's input convolution in ``sd`` to the model's input channels, in place.

    Returns what was done, for the log line written once the checkpoint has loaded; ``None`` if nothing was.
    """
    name = input_conv_name(model)
    key = f"{name}.weight"
    target = model.state_dict().get(key) if name is not None else None
    have = sd.get(key)
    if (target is None or have is None or have.dim() != 4 or have.shape[1] != 3 or target.shape[1] == 3
            or have.shape[:1] + have.shape[2:] != target.shape[:1] + target.shape[2:]):
        return None
    n = target.shape[1]
    sd[key] = adapt_input_conv(have, in_chans=n)
    rule = "summed over R, G, B" if n == 1 else f"R, G, B repeated and scaled by 3/{n}"
    return f"adapted the pretrained {key} from 3 to {n} input channels ({rule}, as timm does)"


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
        source: see :func:`pretrained_file`: ``True``/``"imagenet"``, ``"tv2"``, ``"timm:<model>.<tag>"``, a
            local path or a URL.
        arch: the model's architecture (registered name or torchvision/timm model name), which named sources
            are looked up for.

    Raises:
        ValueError: missing or unexpected keys or shape mismatches, listed together; the model is unchanged.
    """
    path = pretrained_file(source, arch=arch, progress=progress)
    return load_checked(model, load_state_dict_file(path), where=str(path), arch=arch)


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, where: str,
                 arch: Optional[str] = None) -> nn.Module:
    """Load a torchvision- or timm-format ``state_dict`` into ``model`` with ``strict=True``, all or nothing.

    The classifier, stages the model does not build and statistics its norm layers do not keep are dropped
    first, and an RGB input convolution is adapted to a model built with other input channels
    (:func:`adapt_input_conv`); everything else must fit.

    Args:
        where: where the state dict came from, for messages (a file name).

    Raises:
        ValueError: missing or unexpected keys or shape mismatches, listed together; the model is unchanged.
    """
    sd, unused_stats = _adapt_to_model(dict(state_dict), model)
    adapted = _adapt_input_channels(sd, model)
    problems = state_dict_mismatches(model, sd)
    if problems:
        raise ValueError(
            f"checkpoint {where!r} does not fit {type(model).__name__}"
            f"{f' ({arch})' if arch else ''}; expected a torchvision/timm ResNet state dict. {problems}"
        )
    model.load_state_dict(sd, strict=True)
    if adapted:
        logger.info("%s: %s", where, adapted)
    if unused_stats:
        # Loading BN weights into GN is a common initialisation (mmdet/mmseg do it with a log line), but the
        # layers then normalise with different statistics than the ones the weights were trained with.
        warnings.warn(
            f"checkpoint {where!r} holds BatchNorm running statistics for {len(unused_stats)} layers "
            f"({short_names(unused_stats, 3)}) that this model's "
            f"normalisation does not keep; only their affine weight and bias were loaded. Use weights trained "
            f"with the same norm layer for outputs that match the checkpoint's.", UserWarning, stacklevel=3)
    return model
