"""report.md of a run: what ran, data statistics, loss and throughput, evaluation before/after extension.

Built only from the files a run leaves behind (recipe, shard meta.json, metrics.jsonl, eval JSON,
perplexity JSON), so it can be regenerated at any time.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from prolong.config import Recipe, format_count


def machine_line() -> str:
    """One line about where the run happened: the CPU's vector extensions decide the training dtype (and speed)."""
    import os
    import platform

    from prolong.model.loss import cpu_description

    return f"{platform.machine()} ({cpu_description()}), {os.cpu_count()} cores, Python {platform.python_version()}"


def cpu_dtype_line(recipe: Recipe, run_dir: Path) -> str:
    """What CPU training computed in, from each trained stage's resolved recipe.yaml: the same recipe and
    seed give other numbers in bfloat16 (autocast, where the CPU has native bf16) than in float32."""
    from prolong.config import load_recipe
    from prolong.train.stages import stage_dir

    dtypes: dict[str, list[str]] = {}
    for stage in recipe.stages:
        path = stage_dir(recipe, stage) / "recipe.yaml"
        if path.exists():
            dtypes.setdefault(load_recipe(path).training.cpu_compute_dtype, []).append(stage.name)
    if not dtypes:
        return ""
    parts = [f"{dtype} ({', '.join(names)})" for dtype, names in dtypes.items()] if len(dtypes) > 1 else list(dtypes)
    return (f"Training on a CPU computes in {' and '.join(parts)} (`training.cpu_compute_dtype`, resolved; "
            "a run of the same seed in the other dtype gives other numbers).")


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
            assert stage.rope.yarn is not None  # RopeSpec holds exactly one of theta and yarn
            rope = f"YaRN x{stage.rope.yarn.factor:g}"
        mix = ", ".join(
            f"{e.domain}{'@' + format_count(e.doc_len) if e.doc_len else ''} {e.proportion:.0%}" for e in stage.mixture
        )
        init = recipe.init_stage(stage)
        start = init.name if init else ("the model" if stage.init_from in ("previous", "model") else stage.init_from)
        rows.append([stage.name, stage.kind, format_count(stage.seq_len), str(stage.num_steps),
                     format_count(stage.num_tokens), rope, f"{stage.lr:g}", stage.attention, mix, start])
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
    for (label, summary), style in zip(summaries.items(), styles, strict=False):
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


def position_ranges(base_len: int, seq_len: int, lengths: list[int]) -> list[tuple[int, int]]:
    """[start, end) position ranges: within the base's length, then up to each longer evaluation length."""
    edges = [0, min(base_len, seq_len)] + [n for n in sorted(lengths) if base_len < n < seq_len]
    edges += [seq_len] if seq_len > base_len else []
    return list(itertools.pairwise(edges))


def range_loss(result: dict[str, Any], start: int, end: int) -> float:
    """Mean loss of the position buckets of a perplexity result that lie inside [start, end)."""
    losses = [b["loss"] for b in result["buckets"] if b["start"] >= start and b["end"] <= end]
    if not losses:
        raise ValueError(f"no bucket of {result['seq_len']}-token documents lies inside positions {start}-{end}")
    return statistics.fmean(losses)


def mean_score(summary: dict[str, Any], keep: Any = lambda n: True) -> float | None:
    """Mean score over the tasks and the lengths `keep` accepts (None when there are none)."""
    scores = [v for task in summary["tasks"].values() for n, v in task.items() if keep(int(n))]
    return statistics.fmean(scores) if scores else None


CLEAR_NATS = 0.1  # a loss difference the report calls clear; smaller ones are named as slight


def _verdict(delta: float, up: str, down: str, flat: str) -> str:
    """Words for a loss change: `up` when it clearly rises, `down` when it clearly falls, else `flat`."""
    if abs(delta) < CLEAR_NATS:
        return f"{flat} (under {CLEAR_NATS} nats)"
    return up if delta > 0 else down


def _fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def effect_section(recipe: Recipe, summaries: dict[str, dict[str, Any]], perplexity: dict[str, dict[str, Any]],
                   short_perplexity: dict[str, dict[str, Any]] | None) -> str:
    """The headline: does the base use its context, does it fail beyond its length, does extension fix it.
    Numbers only from this run's files; the sentences say which way each number went."""
    base = recipe.base_stage()
    lines = [f"Seed {recipe.seed} (data order and initialisation); evaluation examples from seed {recipe.eval.seed}."]
    names = list(perplexity)
    if names:
        seq_len = perplexity[names[0]]["seq_len"]
        ranges = position_ranges(base.seq_len, seq_len, recipe.eval.lengths)
        trained = {s.name: s.seq_len for s in recipe.stages}
        header = ["model", "trained at"] + [f"positions {format_count(a)}-{format_count(b)}" for a, b in ranges]
        rows = [[name, format_count(trained.get(name, 0))] + [f"{range_loss(perplexity[name], a, b):.3f}"
                                                              for a, b in ranges] for name in names]
        lines += ["", (f"Mean next-token loss (nats) over {perplexity[names[0]]['documents']} documents of "
                      f"{format_count(seq_len)} tokens, by position range:"), "", _table(header, rows)]
        first, final = names[0], names[-1]
        if len(ranges) > 1:
            within = range_loss(perplexity[first], *ranges[0])
            beyond = range_loss(perplexity[first], ranges[1][0], seq_len)
            final_beyond = range_loss(perplexity[final], ranges[1][0], seq_len)
            final_last = range_loss(perplexity[final], *ranges[-1])
            lines += ["", (
                f"Beyond its {format_count(base.seq_len)} training tokens the base's loss goes from {within:.3f} to "
                f"{beyond:.3f} ({beyond - within:+.3f} nats: {_verdict(beyond - within, 'it fails there', 'it does not rise', 'about flat')}); "
                f"{final} has {final_beyond:.3f} beyond {format_count(base.seq_len)} ({final_beyond - beyond:+.3f} vs the "
                f"base) and {final_last:.3f} at positions {format_count(ranges[-1][0])}-{format_count(seq_len)}."
            )]
    if short_perplexity:
        for name, result in short_perplexity.items():
            buckets = result["buckets"]
            early, late = buckets[0], buckets[-1]
            lines += ["", (
                f"Within {format_count(result['seq_len'])}-token documents, {name}'s loss at positions "
                f"{early['start']}-{early['end']} is {early['loss']:.3f} and at {late['start']}-{late['end']} "
                f"{late['loss']:.3f} ({late['loss'] - early['loss']:+.3f}: "
                f"{_verdict(late['loss'] - early['loss'], 'no gain from context', 'lower late in the document: some use of context', 'little gain from context')})."
            )]
    labels = list(summaries)
    if len(labels) >= 2:
        before, after = labels[0], labels[-1]
        far = [n for n in recipe.eval.lengths if n > base.seq_len]
        one_example = 100 / max(1, recipe.eval.num_examples)
        for task in sorted(summaries[before]["tasks"]):

            def task_mean(label: str, keep: Any, task: str = task) -> float | None:
                return mean_score({"tasks": {task: summaries[label]["tasks"].get(task, {})}}, keep)

            short_before, short_after = (task_mean(label, lambda n: n <= base.seq_len) for label in (before, after))
            long_before, long_after = (task_mean(label, lambda n: n > base.seq_len) for label in (before, after))
            verdict = ""
            if long_before is not None and long_after is not None:
                gain = long_after - long_before
                verdict = f" ({gain:+.1f}: " + ("extension beats the base there" if gain >= one_example else
                                                "the base is better there" if gain <= -one_example else
                                                "within one example") + ")"
            lines += ["", (
                f"{task} (x100, {recipe.eval.num_examples} examples a length): at <= {format_count(base.seq_len)} "
                f"tokens {before} {_fmt(short_before)}, {after} {_fmt(short_after)}; at "
                f"{', '.join(format_count(n) for n in far)} {before} {_fmt(long_before)}, "
                f"{after} {_fmt(long_after)}{verdict}."
            )]
    return "\n".join(lines)


def _retrieval_note(recipe: Recipe) -> str:
    from prolong.demo import SYNTHETIC_DOMAINS

    synthetic = {d.name for d in recipe.data.domains} & set(SYNTHETIC_DOMAINS)
    if not synthetic:
        return "Its recall scores are expected to be near zero: read the trends, not the absolute numbers."

    def shares(domain: str) -> str:
        return ", ".join(f"{s.name} {e.proportion:.0%}" for s in recipe.stages for e in s.mixture if e.domain == domain)

    notes = []
    if "retrieval" in synthetic:
        notes.append(
            "So that a model this small learns to read its context at all, its data include synthetic retrieval "
            "and copy documents (domain `retrieval`, prolong.data.retrieval_corpus: passages copied, key-value "
            "facts recalled, and needle and JSON KV questions in the evaluation's own templates with fresh random "
            f"keys and values; share of tokens: {shares('retrieval')}).")
    if "passkey" in synthetic:
        notes.append(
            "The one skill the evaluation scores it on is taught directly: one-digit passkey questions in the "
            "evaluation's own template with fresh keys, the loss on the answer only (domain `passkey`; share of "
            f"tokens: {shares('passkey')}).")
    return " ".join(notes) + (
        f" Each document is shorter than the base's {format_count(recipe.stages[0].seq_len)} tokens (checked when "
        "the data is built): the skill is taught at short range only, so recall at longer lengths measures whether "
        "the model carries it to positions it was extended to, which is what the recipe is for.")


def write_report(recipe: Recipe, run_dir: Path, summaries: dict[str, dict[str, Any]],
                 perplexity: dict[str, dict[str, Any]], phase_seconds: dict[str, float],
                 total_seconds: float, short_perplexity: dict[str, dict[str, Any]] | None = None) -> Path:
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
{cpu_dtype_line(recipe, run_dir)}
The resolved recipe is in `recipe.yaml`; every number below comes from the files in this directory.

## The effect

{effect_section(recipe, summaries, perplexity, short_perplexity)}

## What ran

{_table(["stage", "kind", "length", "steps", "tokens", "RoPE", "peak LR", "attention", "mixture", "starts from"],
        _stage_rows(recipe))}

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
scores x100. "before" is the base model ({recipe.base_stage().name}, trained at
{format_count(recipe.base_stage().seq_len)} tokens); "after" is the final model. Loss by position is measured
on the pretraining stages, whose next-token distribution no SFT has changed.

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
token-averaged chunked loss, checkpoints, HF exports, SFT with the loss on answers only, and the HELMET/RULER
evaluation protocol. The model has a few million parameters and trains for minutes on a CPU: it is not
Llama-3. {_retrieval_note(recipe)}
The loss-by-position documents come from the same local corpus as the training data, so the loss
measures fitting long inputs, not generalisation. With a handful of examples per length, a recall score
moves in large steps; read the direction, and compare seeds.
"""
    path = run_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- ablations
def _direction(delta_loss: float, delta_recall: float, loss_tie: float, recall_tie: float) -> str:
    """Whether the reference (ProLong's choice) beats a variant on each measure (ties within the noise
    margins), and so whether ProLong's finding reproduces here: yes / no / mixed / within noise."""
    loss = "tie" if abs(delta_loss) < loss_tie else ("better" if delta_loss < 0 else "worse")
    recall = "tie" if abs(delta_recall) < recall_tie else ("better" if delta_recall > 0 else "worse")
    verdicts = {loss, recall} - {"tie"}
    verdict = ("within noise" if not verdicts else "mixed" if len(verdicts) == 2
               else "yes" if verdicts == {"better"} else "no")
    return f"loss {loss}, recall {recall}: **{verdict}**"


def plot_ablation(perplexity: dict[str, dict[str, Any]], deltas: dict[str, tuple[float, float]],
                  base_len: int, path: Path) -> Path:
    """Loss by position of every run, and each variant's difference from the reference."""
    plt = _pyplot()
    fig, (ax_pos, ax_loss, ax_recall) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, result in perplexity.items():
        centers = [(b["start"] + b["end"]) / 2 for b in result["buckets"]]
        ax_pos.plot(centers, [b["loss"] for b in result["buckets"]], marker="o", ms=2, label=name,
                    lw=2.2 if name == "reference" else 1.2)
    ax_pos.axvline(base_len, color="grey", ls="--", lw=1)
    ax_pos.set_xlabel(f"token position (dashed: the base's {format_count(base_len)})")
    ax_pos.set_ylabel("mean next-token loss (nats)")
    ax_pos.set_title("loss by position")
    ax_pos.grid(alpha=0.3)
    ax_pos.legend(fontsize=7)
    names = list(deltas)
    ax_loss.bar(names, [deltas[n][0] for n in names], color="tab:red")
    ax_loss.set_title(f"reference - variant: loss beyond {format_count(base_len)}\n(negative: the reference is better)")
    ax_recall.bar(names, [deltas[n][1] for n in names], color="tab:green")
    ax_recall.set_title(f"reference - variant: recall beyond {format_count(base_len)}\n(positive: the reference is better)")
    for ax in (ax_loss, ax_recall):
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(alpha=0.3, axis="y")
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ablation_report(run: Recipe, results: dict[str, dict[str, Any]], ablations: dict[str, Any],
                          base_len: int, num_examples: int, out_dir: Path) -> Path:
    """OUT_DIR/ablation.md and ablation.png from the paired runs' results; returns the report's path.

    results: "base" and each ablation name -> {"eval": summary, "perplexity": result, "stage": StageSpec};
    num_examples: the prompts each run was evaluated on per task and length (the recall tie margin).
    """
    def beyond(name: str) -> float:
        result = results[name]["perplexity"]
        return range_loss(result, base_len, result["seq_len"])

    def recall(name: str) -> float:
        return mean_score(results[name]["eval"], lambda n: n > base_len) or 0.0

    reference = results["reference"]["stage"]
    from prolong.ablate import first_long_stage, post_training

    base, demo_stage = first_long_stage(run)
    after = ", ".join(f"{s.name} ({s.num_steps} steps)" for s in post_training(run))
    then = f", then the demo run's own {after} alike" if after else ""
    reference_rope = _stage_rows(run)[run.stages.index(demo_stage)][5]
    some = next(iter(results["reference"]["eval"]["tasks"].values()))
    lengths = sorted(int(n) for n in some)
    recall_tie = 100 / max(1, len(results["reference"]["eval"]["tasks"]) * len(lengths) * num_examples)
    loss_tie = 0.01
    rows = [["base (no extension)", "-", f"{beyond('base'):.3f}", "", f"{recall('base'):.1f}", "", "", ""]]
    deltas = {}
    for name, ablation in ablations.items():
        d_loss, d_recall = beyond("reference") - beyond(name), recall("reference") - recall(name)
        if name != "reference":
            deltas[name] = (d_loss, d_recall)
        rows.append([
            name, ablation.change, f"{beyond(name):.3f}", "" if name == "reference" else f"{d_loss:+.3f}",
            f"{recall(name):.1f}", "" if name == "reference" else f"{d_recall:+.1f}", ablation.paper,
            "" if name == "reference" else _direction(d_loss, d_recall, loss_tie, recall_tie),
        ])
    perplexity = {name: results[name]["perplexity"] for name in ["base", *ablations]}
    plot_ablation(perplexity, deltas, base_len, out_dir / "ablation.png")
    seq_len = results["reference"]["perplexity"]["seq_len"]
    header = ["run", "what differs from the reference", f"loss beyond {format_count(base_len)}",
              "reference - run", f"recall {', '.join(format_count(n) for n in lengths)}", "reference - run",
              "ProLong's finding", "the reference here: reproduces?"]
    text = f"""# {run.name}: ablations of the first long stage

Paired runs from the same base model ({base.name}, {format_count(base_len)} tokens), seed {run.seed}, each
{reference.num_steps} steps of {format_count(reference.tokens_per_step)} tokens at {format_count(reference.seq_len)}
(peak LR {reference.lr:g}){then}; the
reference is the demo's own stage ({reference_rope}, {reference.attention}
attention, {', '.join(f'{e.domain} {e.proportion:.0%}' for e in reference.mixture)}). Loss: mean next-token loss over
positions {format_count(base_len)}-{format_count(seq_len)} of {results['reference']['perplexity']['documents']}
{format_count(seq_len)}-token documents, measured before that SFT. Recall: mean of
{', '.join(sorted(results['reference']['eval']['tasks']))} (x100) at {', '.join(format_count(n) for n in lengths)}
after it ("base": {run.base_stage().name}), {num_examples} examples each; one example moves
the mean by {recall_tie:.1f}, so differences smaller than that are ties, as are loss differences under {loss_tie} nats.
"reference - run": negative loss and positive recall mean the reference (ProLong's choice) is better.

{_table(header, rows)}

![loss by position and the differences](ablation.png)

Every run here is minutes of CPU on a model of a few million parameters; ProLong's findings are on Llama-3-8B
with billions of tokens and HELMET. A direction that agrees is a reproduction in kind, not in size; one that
disagrees may be the scale, the few examples, or a real difference. To check a direction on another seed:
`prolong demo --seed N --out-dir DIR`, then `prolong ablate --run-dir DIR`.
"""
    path = out_dir / "ablation.md"
    path.write_text(text, encoding="utf-8")
    return path
