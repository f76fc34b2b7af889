"""What a training run reports: FLOPs (mask-aware), MFU, metrics.jsonl, TensorBoard, progress, plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

# dense bf16 peak of one device, for MFU; a device not listed gets no MFU rather than a guessed one
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
}


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of `device`, None when unknown (CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def matmul_params(config: PretrainedConfig) -> int:
    """Parameters that take part in a matmul per token: decoder layers and the LM head (not embeddings)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    attention = hidden * q_out * 2 + hidden * kv_out * 2  # q, o, k, v
    mlp = 3 * hidden * config.intermediate_size  # gate, up, down
    return layers * (attention + mlp) + hidden * config.vocab_size


def training_flops(config: PretrainedConfig, num_tokens: int, sum_squared_doc_lens: int) -> float:
    """FLOPs of forward + backward on `num_tokens` whose attention segments have these squared lengths.

    Matmuls: 6 per parameter per token. Attention: for a causal segment of length l, QK^T and AV cost
    2 * 2 * l^2/2 * H * D in forward, x3 with backward -> 6 * l^2 * H * D per layer. Counting from the
    sum of squared document lengths (not T^2) is what makes the MFU mask-aware: masked-out work that a
    varlen kernel skips is not credited. Recomputation by activation checkpointing is not counted.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 6 * config.num_hidden_layers * config.num_attention_heads * head_dim * sum_squared_doc_lens
    return 6.0 * matmul_params(config) * num_tokens + attention


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory (GPU) or peak resident set size of this process (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MetricsWriter:
    """metrics.jsonl (always) and TensorBoard (when installed); rank 0 only."""

    def __init__(self, stage_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = stage_dir / "metrics.jsonl"
        self.tensorboard = None
        if enabled:
            stage_dir.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(stage_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tensorboard = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a step's metrics or an event) to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"time": time.time(), **record}) + "\n")
        if self.tensorboard is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None:
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Step records of a metrics.jsonl (events without a loss are left out)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if "loss" in r]


def plot_stage(metrics_path: Path, out_dir: Path, title: str) -> list[Path]:
    """loss.png and throughput.png of a stage from its metrics.jsonl; returns the files written."""
    records = read_metrics(metrics_path)
    if not records:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    # a resumed run repeats the steps after its checkpoint: keep the latest record of each step
    by_step = {r["step"]: r for r in records}
    steps = sorted(by_step)
    written = []
    for name, key, label in (
        ("loss", "loss", "loss (mean over valid tokens)"),
        ("throughput", "tokens_per_s", "tokens/s"),
    ):
        values = [by_step[s].get(key, float("nan")) for s in steps]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, values, lw=1.2)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
