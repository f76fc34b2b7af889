"""Tiled MLP: each decoder layer's MLP computed over tiles of the sequence, forward and backward.

A gated MLP (down(act(gate(x)) * up(x)), Llama / Qwen2 / Mistral) works on each token alone, so it can
run on slices of the tokens. At long T its [T, intermediate] temporaries (gate, up, act, their product
and their gradients, 3.5x the hidden size wide) dominate a layer's backward; computed per tile they
never exist whole. The forward keeps only the MLP input; the backward recomputes each tile and
accumulates the weight gradients in float32. Same math as the untiled MLP per token; weight gradients
are sums over tiles instead of one matmul, so results agree to rounding (<= 1e-6 in float32), not bit
for bit.

Applied in place: the MLP module's class is swapped for a subclass whose forward tiles (as FSDP2 does
with its modules), so parameter names, state dicts and the HF export are unchanged.

Tiled norms: the same for each decoder layer's RMSNorms and the final one (`apply_tiled_norms`). HF's
RMSNorm computes in float32, so autograd keeps a float32 copy of its [T, D] input and its backward
makes half a dozen float32 [T, D] temporaries: at 512K tokens and D = 4096 that is 8 GiB each, the
largest buffers of a layer's backward. Per token a norm is exact under tiling: the forward is the
module's own, tile by tile (bitwise equal output); backward recomputes each tile, so only the input
(in the compute dtype) is kept, and the weight gradient is summed over tiles in float32.

On fake tensors (`prolong plan`) only the distinct tiles run: the first and a shorter last one. Every
full tile allocates and frees the same, so the memory is the same and a dry run stays fast.
Legend: N tokens (all leading dims flattened), D hidden size, I intermediate size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from prolong.errors import UserError

# Below this many tokens per rank `tiled_mlp: auto` leaves the MLP untiled (today's exact math): the
# [T, intermediate] temporaries then weigh less than the layer's weights and activations around them.
AUTO_MIN_TOKENS = 32 * 1024
# Tiles shorter than this make the matmuls too thin to run at full speed.
MIN_TILE_TOKENS = 1024
GATED_MLP_CHILDREN = frozenset({"gate_proj", "up_proj", "down_proj", "act_fn"})


def resolve_tiled_mlp(setting: bool | str, tokens_per_rank: int) -> bool:
    """Whether `training.tiled_mlp` (true, false or "auto") tiles a stage with `tokens_per_rank` tokens.

    auto: on from AUTO_MIN_TOKENS tokens per rank (seq_len / sequence_parallel), where the untiled
    MLP's temporaries start to dominate a layer; below it the MLP stays untiled, bit for bit as before.
    """
    if setting == "auto":
        return tokens_per_rank >= AUTO_MIN_TOKENS
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"tiled_mlp must be true, false or 'auto', got {setting!r}")


def auto_tile_tokens(num_tokens: int, hidden_size: int) -> int:
    """Tile length for `num_tokens` tokens of a hidden size `hidden_size` MLP.

    About hidden_size tokens per tile (as ALST does): then each [tile, intermediate] temporary is the
    size of one [intermediate, hidden] weight matrix, so the tiled MLP's working memory is a few weight
    matrices whatever T is. At least MIN_TILE_TOKENS; the tiles are made equal (T split evenly).
    """
    target = max(hidden_size, MIN_TILE_TOKENS)
    num_tiles = max(1, math.ceil(num_tokens / target))
    return math.ceil(num_tokens / num_tiles)


def check_gated_mlp(mlp: Any, where: str) -> None:
    """Refuse, naming `where`, an MLP that is not the per-token gated MLP this module knows how to tile."""
    if not isinstance(mlp, nn.Module):
        raise UserError(
            f"training.tiled_mlp: {where} has no `mlp` module; tiled MLP needs decoder layers with a gated "
            "MLP (Llama, Qwen2, Mistral); set training.tiled_mlp: false"
        )
    children = {name for name, _ in mlp.named_children()}
    linear = all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))
    own_params = [name for name, _ in mlp.named_parameters(recurse=False)]
    if children != GATED_MLP_CHILDREN or not linear or own_params:
        raise UserError(
            f"training.tiled_mlp: {where}.mlp is a {type(mlp).__name__} with parts {sorted(children)}; "
            f"tiled MLP knows only the per-token gated MLP with parts {sorted(GATED_MLP_CHILDREN)} "
            "(nn.Linear projections: Llama, Qwen2, Mistral). A mixture of experts or any other MLP is not "
            "tiled: set training.tiled_mlp: false for this model"
        )


def tile_starts(x: torch.Tensor, num_tokens: int, tile: int) -> list[int]:
    """Where the tiles of `num_tokens` tokens start; on fake tensors only the distinct ones (see top)."""
    starts = list(range(0, num_tokens, tile))
    if isinstance(x, FakeTensor) and len(starts) > 2:
        short_last = num_tokens - starts[-1] < tile
        return [starts[0], starts[-1]] if short_last else [starts[0]]
    return starts


def _run_tiles(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int) -> torch.Tensor:
    """run(x) tile by tile into one preallocated output (no list of tiles to concatenate: 1x, not 2x)."""
    # detached: a view taken under no_grad of a tensor that requires grad would still claim to require
    # it, without a grad_fn, which module hooks (torch's ModTracker / memory trackers) reject
    x_ND = x.detach().reshape(-1, x.shape[-1])
    first = run(x_ND[:tile])
    out_ND = first.new_empty((x_ND.shape[0], first.shape[-1]))
    out_ND[:tile] = first
    del first
    for start in tile_starts(x, x_ND.shape[0], tile)[1:]:
        out_ND[start : start + tile] = run(x_ND[start : start + tile])
    return out_ND.view(*x.shape[:-1], out_ND.shape[-1])


class _TiledMLPFunction(torch.autograd.Function):
    """out = mlp(x) computed tile by tile; backward recomputes each tile and returns the weight grads."""

    @staticmethod
    def forward(
        ctx: Any,
        run: Callable[[torch.Tensor], torch.Tensor],
        module: nn.Module,
        tile_tokens: int,
        x: torch.Tensor,
        *params: torch.Tensor,
    ) -> torch.Tensor:
        ctx.run, ctx.module, ctx.tile_tokens = run, module, tile_tokens
        ctx.save_for_backward(x)
        return _run_tiles(run, x, tile_tokens)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        params = tuple(ctx.module.parameters())
        needs_x = ctx.needs_input_grad[3]
        trained = [i for i, p in enumerate(params) if ctx.needs_input_grad[4 + i]]
        x_ND = x.reshape(-1, x.shape[-1])
        grad_ND = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x_ND = torch.empty_like(x_ND) if needs_x else None
        # float32 sums over tiles: a bf16 weight gradient summed tile by tile would round once per tile
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        for start in tile_starts(x, x_ND.shape[0], ctx.tile_tokens):
            end = start + ctx.tile_tokens
            with torch.enable_grad():
                x_tile = x_ND[start:end].detach().requires_grad_(needs_x)
                out_tile = ctx.run(x_tile)
                inputs = ([x_tile] if needs_x else []) + [params[i] for i in trained]
                grads = list(torch.autograd.grad(out_tile, inputs, grad_ND[start:end]))
            if grad_x_ND is not None:
                grad_x_ND[start:end] = grads.pop(0)
            for i, grad in zip(trained, grads, strict=True):
                grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
                summed = grad_params[i]
                grad_params[i] = grad if summed is None else summed.add_(grad)
        grad_params = [g if g is None else g.to(p.dtype) for g, p in zip(grad_params, params, strict=True)]
        grad_x = grad_x_ND.view_as(x) if grad_x_ND is not None else None
        return (None, None, None, grad_x, *grad_params)


# the mixins are only ever mixed into an nn.Module subclass (tile_mlp, apply_tiled_norms); the type
# checker is told so, the runtime classes stay plain mixins
if TYPE_CHECKING:
    _ModuleMixin = nn.Module
else:
    _ModuleMixin = object


class TiledMLPMixin(_ModuleMixin):
    """Mixed into an MLP's own class by `tile_mlp`: forward runs over sequence tiles."""

    mlp_tile_tokens: int | None  # None: auto_tile_tokens per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_forward = super().forward  # the model's own MLP forward, run on each tile
        num_tokens = x.numel() // x.shape[-1]
        tile = self.mlp_tile_tokens or auto_tile_tokens(num_tokens, x.shape[-1])
        if tile >= num_tokens:
            return base_forward(x)  # one tile is the plain MLP
        return _TiledMLPFunction.apply(base_forward, self, tile, x, *self.parameters())


_TILED_CLASSES: dict[type, type] = {}


def tile_mlp(mlp: nn.Module, tile_tokens: int | None = None, where: str = "decoder layer") -> None:
    """Make `mlp` (a gated MLP, checked) run over sequence tiles of `tile_tokens` (None: automatic)."""
    if tile_tokens is not None and tile_tokens <= 0:
        raise UserError(f"training.mlp_tile_tokens must be positive, got {tile_tokens}")
    if not isinstance(mlp, TiledMLPMixin):
        check_gated_mlp(mlp, where)
        cls = type(mlp)
        if cls not in _TILED_CLASSES:
            _TILED_CLASSES[cls] = type(f"Tiled{cls.__name__}", (TiledMLPMixin, cls), {})
        mlp.__class__ = _TILED_CLASSES[cls]
    cast(TiledMLPMixin, mlp).mlp_tile_tokens = tile_tokens


def apply_tiled_mlp(layers: list[nn.Module], tile_tokens: int | None = None) -> None:
    """Tile the `mlp` of every decoder layer in `layers`; refuses the whole model if one is unknown."""
    for index, layer in enumerate(layers):  # check all first: never a half-tiled model
        check_gated_mlp(getattr(layer, "mlp", None), f"decoder layer {index} ({type(layer).__name__})")
    for index, layer in enumerate(layers):
        tile_mlp(cast(nn.Module, layer.mlp), tile_tokens, where=f"decoder layer {index}")


# Tokens per norm tile: a norm's per-tile float32 temporaries are then ~1 GiB at D = 4096; shorter
# tiles gain little memory for more launches of memory-bound kernels.
NORM_TILE_TOKENS = 8 * 1024


class TiledNormMixin(_ModuleMixin):
    """Mixed into a norm's own class by `apply_tiled_norms`: forward runs over sequence tiles."""

    norm_tile_tokens: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base_forward = super().forward  # the model's own norm, run on each tile
        num_tokens = x.numel() // x.shape[-1]
        if self.norm_tile_tokens >= num_tokens:
            return base_forward(x)
        return _TiledMLPFunction.apply(base_forward, self, self.norm_tile_tokens, x, *self.parameters())


def is_token_norm(module: nn.Module) -> bool:
    """An RMSNorm or LayerNorm over the last dim with at most a weight and a bias: per token, tileable."""
    per_token = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
    params = {name for name, _ in module.named_parameters()}
    return per_token and not list(module.children()) and params <= {"weight", "bias"}


def apply_tiled_norms(model: nn.Module, layers: list[nn.Module], tile_tokens: int = NORM_TILE_TOKENS) -> int:
    """Tile the norms that act on the [T, D] residual stream: each decoder layer's direct-child norms and
    the model's final norm (not per-head q/k norms, whose input is [T, heads, head dim]). Returns how many."""
    stream_norms = [m for layer in layers for m in layer.children() if is_token_norm(m)]
    in_layers = {id(m) for layer in layers for m in layer.modules()}
    stream_norms += [m for m in model.modules() if is_token_norm(m) and id(m) not in in_layers]
    for norm in stream_norms:
        if not isinstance(norm, TiledNormMixin):
            cls = type(norm)
            if cls not in _TILED_CLASSES:
                _TILED_CLASSES[cls] = type(f"Tiled{cls.__name__}", (TiledNormMixin, cls), {})
            norm.__class__ = _TILED_CLASSES[cls]
        cast(TiledNormMixin, norm).norm_tile_tokens = tile_tokens
    return len(stream_norms)
