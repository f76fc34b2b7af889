"""Token-summed cross-entropy that never materializes the [T, vocab] logits.

Returns (loss_sum, num_valid) so the trainer divides by the valid-token count of the whole optimizer step
(all ranks, all accumulation micro-batches), as ProLong does, instead of averaging per-device means.
Legend: T tokens, D hidden size, V vocabulary size.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from prolong.errors import UserError
from prolong.model.batch import IGNORE_INDEX, PackedBatch, attention_kwargs
from prolong.parallel.tiled_mlp import tile_starts


def _chunk_loss_sum(
    hidden_CD: torch.Tensor, weight_VD: torch.Tensor, labels_C: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits_CV = (hidden_CD @ weight_VD.t()).float()  # matmul in the model dtype, softmax in float32
    if softcap is not None:
        logits_CV = torch.tanh(logits_CV / softcap) * softcap
    return F.cross_entropy(logits_CV, labels_C, ignore_index=IGNORE_INDEX, reduction="sum")


LOSS_KERNELS = ("chunked", "liger")


def resolve_loss_kernel(choice: str, device: torch.device | str) -> str:
    """The cross-entropy kernel that `training.loss_kernel` (auto, chunked, liger) means on `device`.

    auto: liger when liger-kernel is installed and the device is CUDA, else chunked. A forced liger
    that cannot run here is an error, never a silent fallback (the two sum in different orders).
    """
    device = torch.device(device)
    liger_runs = device.type == "cuda" and importlib.util.find_spec("liger_kernel") is not None
    if choice == "auto":
        return "liger" if liger_runs else "chunked"
    if choice not in LOSS_KERNELS:
        raise ValueError(f"unknown loss kernel {choice!r}; choose auto, {' or '.join(LOSS_KERNELS)}")
    if choice == "liger" and not liger_runs:
        installed = importlib.util.find_spec("liger_kernel") is not None
        raise UserError(
            f"training.loss_kernel: liger needs liger-kernel (installed: {'yes' if installed else 'no'}) "
            f"and a CUDA device (this run: {device.type}); install it with `pip install liger-kernel` on a "
            "GPU machine, or set loss_kernel to chunked or auto"
        )
    return choice


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it,
    many times slower than float32."""
    # torch.cpu's private probes (torch >= 2.1): get_cpu_capability() says AVX512 but not which extensions.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_description() -> str:
    """This CPU's vector extensions and whether it has native bf16 (what cpu_compute_dtype auto decides by)."""
    return f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {'yes' if native_cpu_bf16() else 'no'}"


def resolve_cpu_compute_dtype(choice: str) -> str:
    """training.cpu_compute_dtype resolved: auto is bfloat16 where the CPU has native bf16, else float32."""
    if choice not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"unknown CPU compute dtype {choice!r}; choose auto, float32 or bfloat16")
    if choice == "auto":
        return "bfloat16" if native_cpu_bf16() else "float32"
    return choice


def chunked_cross_entropy(
    hidden_TD: torch.Tensor,
    weight_VD: torch.Tensor,
    labels_T: torch.Tensor,
    chunk_tokens: int = 2048,
    softcap: float | None = None,
    kernel: str = "chunked",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy over labels != -100 of `hidden_TD @ weight_VD.T`, and the number of such labels.

    When there are several chunks of `chunk_tokens` rows, each computes its logits under activation
    checkpointing, so forward and backward hold at most [chunk_tokens, V] logits at a time; accumulation is in float32. `labels_T` are
    already shifted (label t is predicted from position t). kernel="liger" uses liger-kernel's fused
    linear cross-entropy instead (CUDA; pick it with resolve_loss_kernel, never implicitly).
    """
    if hidden_TD.dim() != 2 or labels_T.dim() != 1 or hidden_TD.shape[0] != labels_T.shape[0]:
        raise ValueError(
            f"expected hidden [T, D] and labels [T], got {tuple(hidden_TD.shape)} and {tuple(labels_T.shape)}"
        )
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if kernel not in LOSS_KERNELS:
        raise ValueError(f"kernel must be one of {LOSS_KERNELS} (resolve 'auto' first), got {kernel!r}")
    labels_T = labels_T.to(hidden_TD.device)
    num_valid = (labels_T != IGNORE_INDEX).sum()
    if kernel == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        loss = liger_fused_linear_cross_entropy(
            hidden_TD, weight_VD, labels_T, ignore_index=IGNORE_INDEX, reduction="sum", softcap=softcap
        )
        loss = loss[0] if isinstance(loss, tuple) else loss
        return loss.float(), num_valid

    total = torch.zeros((), dtype=torch.float32, device=hidden_TD.device)
    # One chunk: its logits exist in forward or in the recomputation either way, so checkpointing would
    # only compute them twice.
    several = hidden_TD.shape[0] > chunk_tokens
    # on fake tensors (prolong plan) only the distinct chunks: every full chunk allocates the same
    for start in tile_starts(hidden_TD, hidden_TD.shape[0], chunk_tokens):
        labels_C = labels_T[start : start + chunk_tokens]
        hidden_CD = hidden_TD[start : start + chunk_tokens]
        if several and (hidden_TD.requires_grad or weight_VD.requires_grad):
            total = total + checkpoint(
                _chunk_loss_sum, hidden_CD, weight_VD, labels_C, softcap, use_reentrant=False
            )
        else:
            total = total + _chunk_loss_sum(hidden_CD, weight_VD, labels_C, softcap)
    return total, num_valid


def _decoder(model: PreTrainedModel) -> nn.Module:
    """The base model that returns hidden states (model.model for Llama/Qwen2/Mistral)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    if base is None or base is model:
        raise ValueError(f"cannot find the decoder of {type(model).__name__} (expected model.model)")
    return base


def _softcap(model: PreTrainedModel) -> float | None:
    # Gemma-2 style final logit soft-capping; None for Llama, Qwen2 and Mistral.
    return getattr(model.config, "final_logit_softcapping", None)


def causal_lm_loss(
    model: PreTrainedModel, batch: PackedBatch, chunk_tokens: int = 2048, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_sum, num_valid) of an HF causal LM on a packed batch, without the [T, V] logits.

    Runs the decoder with attention_kwargs(batch) (document boundaries, no cache, no mask), then the
    chunked loss against the output embedding. Extra kwargs go to chunked_cross_entropy.
    """
    outputs = _decoder(model)(input_ids=batch.input_ids, **attention_kwargs(batch))
    hidden_TD = outputs.last_hidden_state[0]
    weight_VD = model.get_output_embeddings().weight
    return chunked_cross_entropy(
        hidden_TD, weight_VD, batch.labels[0], chunk_tokens=chunk_tokens, softcap=_softcap(model), **kwargs
    )


class CausalLMWithChunkedLoss(nn.Module):
    """An HF causal LM whose forward(batch) returns (loss_sum, num_valid) with the chunked loss.

    The whole computation happens inside this module's forward, so it can be the FSDP2 root: calling a
    submodule of an FSDP-wrapped model directly would skip the root's pre-forward unshard.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        chunk_tokens: int = 2048,
        kernel: str = "chunked",
        cpu_autocast: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.kernel = kernel
        self.cpu_autocast = cpu_autocast  # bfloat16: CPU matrix products under autocast (None: as stored)

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_sum, num_valid) for one packed micro-batch."""
        with torch.autocast("cpu", dtype=self.cpu_autocast or torch.bfloat16, enabled=self.cpu_autocast is not None):
            return causal_lm_loss(self.model, batch, chunk_tokens=self.chunk_tokens, kernel=self.kernel)
