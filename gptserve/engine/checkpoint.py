"""Checkpoint loading with an explicit weight-name map and shape checks.

Accepted: a Hugging Face GPT-2 directory (config.json + model.safetensors or pytorch_model.bin), or a plain
state_dict file (.safetensors, or .pt/.pth/.bin read with weights_only=True) in either this package's names or
Hugging Face's names, for a named preset.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import ModelConfig

# Hugging Face GPT-2 name -> (our name, stored transposed). HF's Conv1D keeps weights as [in, out].
_HF_LAYER_MAP = {
    "ln_1.weight": ("ln_1.weight", False),
    "ln_1.bias": ("ln_1.bias", False),
    "attn.c_attn.weight": ("attn.qkv.weight", True),
    "attn.c_attn.bias": ("attn.qkv.bias", False),
    "attn.c_proj.weight": ("attn.proj.weight", True),
    "attn.c_proj.bias": ("attn.proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False),
    "ln_2.bias": ("ln_2.bias", False),
    "mlp.c_fc.weight": ("mlp.fc.weight", True),
    "mlp.c_fc.bias": ("mlp.fc.bias", False),
    "mlp.c_proj.weight": ("mlp.proj.weight", True),
    "mlp.c_proj.bias": ("mlp.proj.bias", False),
}
_HF_TOP_MAP = {
    "wte.weight": "wte.weight",
    "wpe.weight": "wpe.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
}
# Buffers older HF checkpoints carry (causal masks) and the tied head: not weights of ours.
_HF_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|^lm_head\.weight$")


class CheckpointError(ValueError):
    pass


def locate(path: str) -> tuple[Path, Path | None]:
    """(weights file, HF config.json or None) for a checkpoint directory or file."""
    p = Path(path)
    if p.is_dir():
        config = p / "config.json"
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                return p / name, config if config.is_file() else None
        raise CheckpointError(f"{p}: no model.safetensors or pytorch_model.bin in the checkpoint directory")
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    return p, None


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many types
        raise CheckpointError(f"{file}: cannot read checkpoint: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: not a state_dict of tensors")
    return state


def to_our_names(state: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """Map Hugging Face GPT-2 names (with or without 'transformer.') to ours; our own names pass through."""
    if not any(k.startswith(("transformer.", "h.")) for k in state):  # ours start "blocks." (and "wte.")
        return state
    mapped = {}
    for name, tensor in state.items():
        key = name.removeprefix("transformer.")
        if _HF_IGNORED.search(key):
            continue
        if key in _HF_TOP_MAP:
            mapped[_HF_TOP_MAP[key]] = tensor
            continue
        m = re.fullmatch(r"h\.(\d+)\.(.+)", key)
        if not m or m.group(2) not in _HF_LAYER_MAP:
            raise CheckpointError(f"{file}: unexpected tensor {name!r}")
        ours, transposed = _HF_LAYER_MAP[m.group(2)]
        mapped[f"blocks.{m.group(1)}.{ours}"] = tensor.t() if transposed else tensor
    return mapped


def to_hf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> Hugging Face GPT2LMHeadModel names (the inverse of to_our_names), e.g. to compare with HF."""
    inverse = {ours: (hf, t) for hf, (ours, t) in _HF_LAYER_MAP.items()}
    top = {ours: hf for hf, ours in _HF_TOP_MAP.items()}
    out = {}
    for name, tensor in state.items():
        if name in top:
            out[f"transformer.{top[name]}"] = tensor
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if m and m.group(2) in inverse:
            hf, transposed = inverse[m.group(2)]
            out[f"transformer.h.{m.group(1)}.{hf}"] = tensor.t().contiguous() if transposed else tensor
    out["lm_head.weight"] = state["wte.weight"]
    return out


def checked_state_dict(file: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under our names, after checking every name, shape and value against `model`."""
    state = to_our_names(read_state_dict(file), file)
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{file}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    unexpected = sorted(set(state) - set(expected) - {"lm_head.weight"})
    if unexpected:
        raise CheckpointError(f"{file}: unexpected tensor {unexpected[0]!r}")
    for name, target in expected.items():
        source = state[name]
        if tuple(source.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {tuple(source.shape)}, model expects {tuple(target.shape)}"
            )
        if not source.is_floating_point() or not torch.isfinite(source).all():
            raise CheckpointError(f"{file}: tensor {name!r} is not finite floating point")
    return state


def architecture(model_path: str, preset_cfg: ModelConfig) -> ModelConfig:
    """A HF directory brings its own architecture; a plain state_dict uses the preset's."""
    _, hf_config = locate(model_path)
    return ModelConfig.from_hf_config(hf_config) if hf_config else preset_cfg


NOT_SET = object()


def end_id(model_path: str):
    """The checkpoint's eos_token_id: generation_config.json first, then config.json. -1 when it says null (no end
    token), NOT_SET when neither file names one (or the checkpoint is a plain state_dict file)."""
    directory = Path(model_path)
    if not directory.is_dir():
        return NOT_SET
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read: {exc}") from exc
        if "eos_token_id" not in config:
            continue
        value = config["eos_token_id"]
        if isinstance(value, list):  # several end tokens: the first is the request default
            value = value[0] if value else None
        return -1 if value is None else int(value)
    return NOT_SET
