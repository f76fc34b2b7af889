"""report.md of a run: what ran, data statistics, loss and throughput, evaluation before/after extension.

Built only from the files a run leaves behind (recipe, shard meta.json, metrics.jsonl, eval JSON,
perplexity JSON), so it can be regenerated at any time.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from prolong.config import Recipe, format_count


def machine_line() -> str:
    """One line about where the run happened."""
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _stage_rows(recipe: Recipe) -> list[list[str]]:
    rows = []
    for stage in recipe.stages:
        if stage.rope is None:
            rope = "inherited" if stage is not recipe.stages[0] else "model's"
        elif stage.rope.theta is not None:
            rope = f"theta {stage.rope.theta:.3g}"
        else:
            rope = f"YaRN x{stage.rope.yarn.factor:g}"
        mix = ", ".join(
            f"{e.domain}{'@' + format_count(e.doc_len) if e.doc_len else ''} {e.proportion:.0%}" for e in stage.mixture
        )
        rows.append([stage.name, stage.kind, format_count(stage.seq_len), str(stage.num_steps),
                     format_count(stage.num_tokens), rope, f"{stage.lr:g}", stage.attention, mix])
    return rows


def _data_rows(recipe: Recipe) -> list[list[str]]:
    from prolong.data.format import shard_meta
    from prolong.data.stats import find_shards

    root = Path(recipe.data.shard_dir)
    rows = []
    for stage in recipe.stages:
        shards = find_shards(root / stage.name) if (root / stage.name).exists() else []
        total = sum(shard_meta(p)["num_tokens"] for p in shards) or 1
        for path in shards:
            meta = shard_meta(path)  # our shards and links to MDS packs alike
            rows.append([stage.name, path.name, f"{meta['num_sequences']:,}", f"{meta['num_tokens']:,}",
                         f"{meta['num_documents']:,}", f"{meta['num_tokens'] / total:.0%}"])
    return rows


def _metrics(run_dir: Path, recipe: Recipe) -> dict[str, list[dict[str, Any]]]:
    from prolong.train.metrics import read_metrics

    out = {}
    for stage in recipe.stages:
        records = read_metrics(run_dir / stage.name / "metrics.jsonl")
        by_step = {r["step"]: r for r in records}  # a resumed stage repeats steps: keep the latest
        out[stage.name] = [by_step[s] for s in sorted(by_step)]
    return out


def plot_training(metrics: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Loss against tokens seen, all stages on one axis, one colour per stage."""
    plt = _pyplot()
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.2))
    seen = 0
    for name, records in metrics.items():
        if not records:
            continue
        xs, tokens = [], seen
        for r in records:
            tokens += r["tokens"]
            xs.append(tokens / 1e6)
        ax_loss.plot(xs, [r["loss"] for r in records], lw=1.4, marker="o", ms=3, label=name)
        ax_speed.bar(name, statistics.median(r["tokens_per_s"] for r in records))
        seen = tokens
    ax_loss.set_xlabel("tokens trained (millions)")
    ax_loss.set_ylabel("loss (nats per valid token)")
    ax_loss.set_title("training loss by stage")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_speed.set_ylabel("median tokens/s")
    ax_speed.set_title("throughput by stage")
    ax_speed.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_perplexity(perplexity: dict[str, dict[str, Any]], train_lengths: dict[str, int], path: Path) -> Path:
    """Loss by position for each model, with the length each was trained at marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, result in perplexity.items():
        centers = [(b["start"] + b["end"]) / 2 for b in result["buckets"]]
        line, = ax.plot(centers, [b["loss"] for b in result["buckets"]], marker="o", ms=3, label=name)
        if name in train_lengths and train_lengths[name] < result["seq_len"]:
            ax.axvline(train_lengths[name], color=line.get_color(), ls="--", lw=1, alpha=0.7)
    ax.set_xlabel("token position in the document (dashed: the model's training length)")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title("loss by position: before and after context extension")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_eval(summaries: dict[str, dict[str, Any]], path: Path) -> Path:
    """Score against prompt length for every task, one line style per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = ["-", "--", ":", "-."]
    for (label, summary), style in zip(summaries.items(), styles):
        for task, scores in summary["tasks"].items():
            lengths = sorted(scores)
            ax.plot(lengths, [scores[n] for n in lengths], ls=style, marker="o", label=f"{task} {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("score (x100)")
    ax.set_ylim(-2, 102)
    ax.set_title("synthetic recall before and after extension")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eval_rows(summaries: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    lengths = sorted({n for s in summaries.values() for scores in s["tasks"].values() for n in scores})
    header = ["task", "model"] + [format_count(n) for n in lengths]
    rows = []
    tasks = sorted({t for s in summaries.values() for t in s["tasks"]})
    for task in tasks:
        for label, summary in summaries.items():
            scores = summary["tasks"].get(task, {})
            rows.append([task, label] + [f"{scores[n]:.1f}" if n in scores else "" for n in lengths])
    return header, rows


def write_report(recipe: Recipe, run_dir: Path, summaries: dict[str, dict[str, Any]],
                 perplexity: dict[str, dict[str, Any]], phase_seconds: dict[str, float],
                 total_seconds: float) -> Path:
    """Write run_dir/report.md and the plots it embeds; returns the report's path."""
    metrics = _metrics(run_dir, recipe)
    plot_training(metrics, run_dir / "training.png")
    train_lengths = {s.name: s.seq_len for s in recipe.stages}
    plot_perplexity(perplexity, train_lengths, run_dir / "perplexity.png")
    plot_eval(summaries, run_dir / "eval.png")

    speed_rows = []
    for stage in recipe.stages:
        records = metrics.get(stage.name) or []
        if records:
            mfu = [r["mfu"] for r in records if r.get("mfu") is not None]
            speed_rows.append([
                stage.name, str(len(records)), f"{records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}",
                f"{statistics.median(r['tokens_per_s'] for r in records):,.0f}",
                f"{statistics.median(mfu):.1%}" if mfu else "n/a (no peak FLOPs on CPU)",
                f"{max(r['peak_memory_gb'] for r in records):.2f}",
            ])
    eval_header, eval_rows = _eval_rows(summaries)
    ppl_names = list(perplexity)
    ppl_rows = []
    if ppl_names:
        buckets = perplexity[ppl_names[0]]["buckets"]
        for i, bucket in enumerate(buckets):
            ppl_rows.append([f"{bucket['start']:,}-{bucket['end']:,}"]
                            + [f"{perplexity[n]['buckets'][i]['loss']:.3f}" for n in ppl_names])
    phases = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in phase_seconds.items())
    text = f"""# {recipe.name}: report

{recipe.description.strip()}

Ran on {machine_line()} in {total_seconds / 60:.1f} minutes ({phases}).
The resolved recipe is in `recipe.yaml`; every number below comes from the files in this directory.

## What ran

{_table(["stage", "kind", "length", "steps", "tokens", "RoPE", "peak LR", "attention", "mixture"], _stage_rows(recipe))}

## Data

Packed shards per stage (`prolong data stats {recipe.data.shard_dir}` for more; long documents are cut
into single-document chunks, short ones concatenated with carry-over, SFT conversations packed whole):

{_table(["stage", "shard", "sequences", "tokens", "documents", "share of stage tokens"], _data_rows(recipe))}

## Training

![training loss and throughput](training.png)

{_table(["stage", "steps", "loss first -> last", "median tokens/s", "MFU", "peak memory GB"], speed_rows)}

Per-step metrics: `<stage>/metrics.jsonl`; per-stage plots: `<stage>/plots/`.

## Evaluation before and after extension

Synthetic recall tasks (HELMET/RULER protocol, generated with the model's tokenizer at exact lengths),
scores x100. "before" is the base model trained at {format_count(recipe.stages[0].seq_len)} tokens;
"after" is the final model.

![scores by length](eval.png)

{_table(eval_header, eval_rows)}

### Loss by position

Mean next-token loss over documents of {format_count(perplexity[ppl_names[0]]['seq_len']) if ppl_names else '?'} tokens,
by position. A model that cannot use positions beyond its training length shows a rising loss there;
a well-extended one keeps it flat or falling (more context, better prediction).

![loss by position](perplexity.png)

{_table(["positions"] + ppl_names, ppl_rows)}

## What this demonstrates, and what it cannot

The demo runs every mechanism of the real recipe: local corpora read as streams, repository documents,
packing with document boundaries and a length curriculum, document-masked attention, RoPE base change,
token-averaged chunked loss, checkpoints, HF exports, SFT with assistant-only loss, and the HELMET/RULER
evaluation protocol. The model has a few million parameters and trains for minutes on a CPU: it is not
Llama-3, and its recall scores are expected to be near zero. Read the trends (loss by position beyond
the original length, loss curves), not the absolute numbers.
"""
    path = run_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
