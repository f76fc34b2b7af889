"""RoPE position extrapolation: theta scaling (ProLong) and YaRN (UltraLong).

transformers 5 keeps every RoPE setting in `config.rope_parameters` (a dict with rope_type, rope_theta and,
for YaRN, factor / original_max_position_embeddings / beta_fast / beta_slow); legacy `rope_theta` and
`rope_scaling` keys in an old config.json are folded into it on load. We write only `rope_parameters`, so a
saved checkpoint reloads in plain transformers with the same frequencies.

On a model whose RoPE is already scaled (Llama-3.1's rope_type "llama3", Qwen's "yarn"):
- a new theta KEEPS the scaling: only the base changes, and the scaling's own parameters apply on top of
  the new base (what editing rope_theta in config.json does). The scaling is part of how the model was
  trained; dropping it would change every frequency, not just extend the context.
- YaRN REPLACES a "default", "yarn" or "llama3" scaling, and must count from the same pretraining length:
  the existing scaling's original_max_position_embeddings must equal YaRN's (Llama-3.1: 8192, so
  factor = target length / 8192, as UltraLong does), otherwise it is refused, since the same factor would
  mean a different model. YaRN over any other scaling (linear, dynamic, longrope, ...) is refused: how
  the two compose is not defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel


def suggest_rope_theta(original_len: int, target_len: int, head_dim: int, base_theta: float = 5e5) -> float:
    """Dynamic-NTK suggestion for rope theta: base_theta * t^(d / (d - 2)), t = target_len / original_len.

    Llama-3 (theta 5e5, 8K -> 64K, d=128) gives ~4.1e6; continuing from a 64K model at theta 8e6 to 512K
    gives ~6.6e7. ProLong found larger values work better and uses 8e6 (64K) and 1.28e8 (512K).
    """
    if original_len <= 0 or target_len <= 0:
        raise ValueError(
            f"lengths must be positive, got original_len={original_len}, target_len={target_len}"
        )
    if head_dim <= 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even number > 2, got {head_dim}")
    scale = target_len / original_len
    return float(base_theta * scale ** (head_dim / (head_dim - 2)))


@dataclass(frozen=True)
class YarnScaling:
    """YaRN settings, stored as transformers' standard rope_type "yarn" parameters."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None

    @classmethod
    def for_lengths(cls, original_len: int, target_len: int, **kwargs: Any) -> YarnScaling:
        """YaRN scaling that stretches `original_len` to `target_len` (factor = target / original)."""
        return cls(factor=target_len / original_len, original_max_position_embeddings=original_len, **kwargs)

    def to_rope_parameters(self) -> dict[str, Any]:
        """The `rope_parameters` entries (without rope_theta)."""
        params = {"rope_type": "yarn", **asdict(self)}
        if params["attention_factor"] is None:
            del params["attention_factor"]  # transformers derives 0.1 ln(factor) + 1 itself
        return params


def _rope_dicts(config: PretrainedConfig) -> list[dict[str, Any]]:
    """The flat rope parameter dicts of a config (one, or one per layer type for hybrid models)."""
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        raise ValueError(
            f"{type(config).__name__} has no rope_parameters; prolong needs a RoPE decoder loaded by transformers 5"
        )
    nested = (
        config.nested_rope_parameter_keys(params) if hasattr(config, "nested_rope_parameter_keys") else []
    )
    return [params[key] for key in nested if params[key] is not None] if nested else [params]


def get_rope_theta(config: PretrainedConfig) -> float:
    """The rope theta of a (non-hybrid) config."""
    return float(_rope_dicts(config)[0]["rope_theta"])


YARN_REPLACES: tuple[str, ...] = ("default", "yarn", "llama3")


def _check_yarn_replaces(params: Mapping[str, Any], yarn: YarnScaling) -> None:
    """Refuse a YaRN that would not mean what its factor says on top of the model's current scaling."""
    rope_type = params.get("rope_type", "default")
    if rope_type not in YARN_REPLACES:
        raise ValueError(
            f"rope.yarn on a model whose RoPE is already scaled with rope_type {rope_type!r}: prolong replaces "
            f"only {list(YARN_REPLACES)} with YaRN, since how YaRN composes with {rope_type!r} is not defined; "
            "start from a checkpoint with one of those, or use rope.theta"
        )
    original = params.get("original_max_position_embeddings")
    if (
        rope_type != "default"
        and original is not None
        and int(original) != yarn.original_max_position_embeddings
    ):
        raise ValueError(
            f"rope.yarn.original_max_position_embeddings is {yarn.original_max_position_embeddings}, but the "
            f"model's {rope_type!r} scaling counts from {int(original)} pretrained tokens. YaRN replaces that "
            f"scaling and must count from the same length: set original_max_position_embeddings: {int(original)} "
            f"and factor = target length / {int(original)}"
        )


def apply_rope_config(
    config: PretrainedConfig,
    theta: float | None = None,
    yarn: YarnScaling | Mapping[str, Any] | None = None,
    max_position_embeddings: int | None = None,
) -> PretrainedConfig:
    """Set rope theta and/or YaRN scaling and the maximum length on `config` (in place; also returned).

    theta: new base; keeps the rope type and its parameters (a Llama-3.1 "llama3" or Qwen "yarn" scaling
    applies on top of the new base) unless yarn is given.
    yarn: YarnScaling or a dict with factor, original_max_position_embeddings, beta_fast, beta_slow; replaces
    a default/yarn/llama3 scaling counted from the same original length, refuses anything else (module
    docstring). max_position_embeddings: the new trained length (default for YaRN: factor times the
    original length).
    """
    if theta is not None and theta <= 0:
        raise ValueError(f"rope theta must be positive, got {theta}")
    if isinstance(yarn, Mapping):
        yarn = YarnScaling(**{k: v for k, v in yarn.items() if k != "rope_type"})
    if yarn is not None and yarn.factor < 1:
        raise ValueError(f"YaRN factor must be >= 1, got {yarn.factor}")
    rope_dicts = _rope_dicts(config)
    if yarn is not None:
        for params in rope_dicts:  # all checked before any is changed
            _check_yarn_replaces(params, yarn)
    for params in rope_dicts:
        new_theta = float(theta) if theta is not None else float(params["rope_theta"])
        if yarn is not None:
            params.clear()
            params.update(yarn.to_rope_parameters())
        params["rope_theta"] = new_theta
    if max_position_embeddings is None and yarn is not None:
        max_position_embeddings = round(yarn.factor * yarn.original_max_position_embeddings)
    if max_position_embeddings is not None:
        config.max_position_embeddings = int(max_position_embeddings)
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    return config


def _is_rotary_embedding(module: torch.nn.Module) -> bool:
    return type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")


def set_model_rope(
    model: PreTrainedModel,
    theta: float | None = None,
    yarn: YarnScaling | Mapping[str, Any] | None = None,
    max_position_embeddings: int | None = None,
) -> PreTrainedModel:
    """apply_rope_config on an already built model, and rebuild its rotary embeddings to match.

    The rotary modules compute inv_freq once at construction, so changing the config alone would not change
    the model; each one is rebuilt from the updated config on the device its old buffers lived on.
    """
    apply_rope_config(model.config, theta=theta, yarn=yarn, max_position_embeddings=max_position_embeddings)
    rebuilt = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_rotary_embedding(child):
                fresh = type(child)(config=child.config)
                inv_freq = child.get_buffer("inv_freq")
                setattr(parent, name, fresh.to(device=inv_freq.device, dtype=inv_freq.dtype))
                rebuilt += 1
    if rebuilt == 0:
        raise ValueError(f"no rotary embedding module found in {type(model).__name__}")
    return model
