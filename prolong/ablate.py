"""`prolong ablate`: paired tiny extension runs that each change one thing of the demo's first long stage.

Every run starts from the same base model (the stage a finished `prolong demo` run's first long stage
starts from), with the same seed, steps, learning rate and data order; only the named setting differs
from the reference (the demo's own stage: RoPE base raised, document masking, its long/short mix). Each
then repeats the run's post-training (its SFT) unchanged and is measured the same way: loss by position
over long documents before that SFT (mean beyond the base's length) and synthetic recall after it at the
longer lengths. Results: RUN_DIR/ablate/ablation.md and ablation.png, one directory per run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from prolong.config import Recipe, StageSpec, TokenizerSpec, format_count, load_recipe, save_recipe
from prolong.errors import UserError

console = Console()


@dataclass(frozen=True)
class Ablation:
    """One paired run: what it changes in the reference stage, and what ProLong found on that axis."""

    name: str
    change: str
    paper: str  # the ProLong paper's finding, for the comparison
    stage: Callable[[StageSpec, frozenset[str]], StageSpec]  # (reference stage, long domains) -> stage


def with_long_share(stage: StageSpec, long_domains: frozenset[str], share: float) -> StageSpec:
    """The stage's mixture with its long entries scaled to `share` of the tokens, short ones to the rest."""
    long_now = sum(e.proportion for e in stage.mixture if e.domain in long_domains)
    if not 0 < long_now < 1:
        raise UserError(f"stage {stage.name!r} needs both long and short data to change its long/short mix")
    entries = []
    for entry in stage.mixture:
        is_long = entry.domain in long_domains
        scale = share / long_now if is_long else (1 - share) / (1 - long_now)
        if entry.proportion * scale > 0:
            entries.append(entry.model_copy(update={"proportion": entry.proportion * scale}))
    return stage.model_copy(update={"mixture": entries})


def _same(stage: StageSpec, long_domains: frozenset[str]) -> StageSpec:
    return stage


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in [
        Ablation("reference", "the demo's stage: RoPE base raised, document masks, its long/short mix", "", _same),
        Ablation("rope-kept", "RoPE base kept at the base model's", "raising the RoPE base: long avg 29.1 -> 54.6",
                 lambda s, _: s.model_copy(update={"rope": None})),
        Ablation("cross-document", "attention across packed documents (no document masks)",
                 "document masks: +1.0 long avg", lambda s, _: s.model_copy(update={"attention": "cross_document"})),
        Ablation("long-100", "100% long data, no short data", "60% long / 40% short is best",
                 lambda s, long: with_long_share(s, long, 1.0)),
        Ablation("long-30", "30% long / 70% short data", "60% long / 40% short is best",
                 lambda s, long: with_long_share(s, long, 0.3)),
    ]
}


def first_long_stage(run: Recipe, where: Path | None = None) -> tuple[StageSpec, StageSpec]:
    """(base, reference): the stage the run's first long pretraining stage (longer than its first stage)
    starts from, and that stage."""
    longer = [s for s in run.stages if s.seq_len > run.stages[0].seq_len and s.kind == "pretrain"]
    base = run.init_stage(longer[0]) if longer else None
    if base is None:
        raise UserError(f"{where or run.name}: ablations need a base stage followed by a long pretraining stage "
                        "that starts from it")
    return base, longer[0]


def post_training(run: Recipe) -> list[StageSpec]:
    """The run's stages after its last pretraining stage (its SFT), which every ablation run repeats."""
    last = max(i for i, s in enumerate(run.stages) if s.kind == "pretrain")
    return run.stages[last + 1 :]


def variant_recipe(run: Recipe, run_dir: Path, ablation: Ablation, steps: int | None,
                   examples: int | None) -> Recipe:
    """The recipe of an ablation run: the run's first long stage changed as `ablation` says, starting
    from the run's base export, then the run's post-training stages unchanged (so recall is measured
    after the same SFT as the demo's final model), with the run's tokenizer, data and seed."""
    base, reference = first_long_stage(run)
    long_domains = frozenset(d.name for d in run.data.domains if d.kind == "long")
    stage = ablation.stage(reference, long_domains)
    # shards are per stage name: runs with the reference's mixture share them (and the tokenized cache)
    same_mix = stage.mixture == reference.mixture
    update: dict[str, Any] = {
        "name": "ablate-" + format_count(stage.seq_len).lower() + ("" if same_mix else f"-{ablation.name}"),
        "init_from": str(run_dir / base.name),
        "carry_optimizer_state": False,
    }
    if steps is not None:
        update.update(steps=steps, total_tokens=None)
    lengths = [n for n in run.eval.lengths if n > base.seq_len] or run.eval.lengths
    num_examples = examples if examples is not None else run.eval.num_examples
    return run.model_copy(update={
        "name": f"{run.name}-ablate-{ablation.name}",
        "output_dir": str(run_dir / "ablate" / ablation.name),
        "tokenizer": TokenizerSpec(path=str(run_dir / "tokenizer")),
        "stages": [stage.model_copy(update=update), *post_training(run)],
        "eval": run.eval.model_copy(update={"lengths": lengths, "num_examples": num_examples}),
    })


def long_loss(perplexity: dict[str, Any], beyond: int) -> float:
    """Mean loss of the position buckets that start at or after `beyond`."""
    return statistics.fmean(b["loss"] for b in perplexity["buckets"] if b["start"] >= beyond)


def mean_recall(summary: dict[str, Any]) -> float:
    """Mean score over every task and length of an eval summary."""
    return statistics.fmean(s for scores in summary["tasks"].values() for s in scores.values())


def ablate(run_dir: str = "runs/demo", steps: int | None = None, examples: int | None = None,
           only: list[str] | None = None) -> None:
    """Paired tiny runs that change one thing of ProLong's first long stage, and how each compares.

    Starts every run from the base model of a finished `prolong demo` run in RUN_DIR (the stage its
    first long stage starts from, its tokenizer and data): the reference (the demo's stage: RoPE base
    raised, document masks, its long/short mix), the RoPE base kept, attention across documents, 100%
    long data, 30% long data; each followed by the run's own SFT stages. Same seed, steps and data
    order; --steps N shortens every run's long stage (not the SFT); --examples N recall examples per
    task and length (default: the run's own); --only NAME... runs a subset (the reference is always
    run). Writes RUN_DIR/ablate/ablation.md and ablation.png; rerunning skips finished runs.
    """
    from prolong.data.build import build_stage
    from prolong.demo import perplexity_by_model, perplexity_length
    from prolong.eval.runner import run_eval
    from prolong.report import write_ablation_report
    from prolong.train.commands import train
    from prolong.train.stages import export_dir, is_finished

    root = Path(run_dir)
    if not (root / "recipe.yaml").is_file():
        raise UserError(f"{root} holds no demo run (no recipe.yaml): run `prolong demo --out-dir {root}` first")
    run = load_recipe(root / "recipe.yaml")
    base, _ = first_long_stage(run, where=root / "recipe.yaml")
    if not is_finished(run, base):
        raise UserError(f"the base stage {base.name!r} of {root} is not finished: run `prolong demo` first")
    unknown = sorted(set(only or []) - set(ABLATIONS))
    if unknown:
        raise UserError(f"unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}")
    names = ["reference", *[n for n in ABLATIONS if n != "reference" and (not only or n in only)]]
    ppl_len = perplexity_length(run)
    results: dict[str, dict[str, Any]] = {}
    base_eval = variant_recipe(run, root, ABLATIONS["reference"], steps, examples).eval
    results["base"] = {  # recall of the base as the demo evaluates it (with its SFT at the base's length)
        "eval": run_eval(export_dir(run, run.base_stage()), base_eval, root / "ablate" / "base" / "eval"),
        "perplexity": perplexity_by_model({"base": export_dir(run, base)}, run, ppl_len,
                                          root / "ablate" / "base" / "perplexity")["base"],
    }
    for name in names:
        spec = variant_recipe(run, root, ABLATIONS[name], steps, examples)
        out = Path(spec.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "recipe.yaml"
        save_recipe(spec, path)
        spec = load_recipe(path)  # validated like any recipe
        stage = spec.stages[0]
        console.rule(f"[bold]ablation {name}[/bold]: {ABLATIONS[name].change}")
        if not is_finished(spec, spec.stages[-1]):
            for each in spec.stages:
                build_stage(spec, each)
            train(str(path), resume=True)
        pretrained = export_dir(spec, stage)  # loss by position before any SFT, as the demo measures it
        results[name] = {
            "eval": run_eval(export_dir(spec, spec.stages[-1]), spec.eval, out / "eval"),
            "perplexity": perplexity_by_model({name: pretrained}, spec, ppl_len, out / "perplexity")[name],
            "stage": stage,
        }
    report = write_ablation_report(run, results, {n: ABLATIONS[n] for n in names}, base.seq_len,
                                   base_eval.num_examples, root / "ablate")
    print(f"ablation report: {report}", flush=True)
