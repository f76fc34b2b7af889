"""`prolong demo`: the whole ProLong recipe in miniature, on this machine, with a report at the end.

Phases: local corpus -> tokenizer -> packed data per stage -> base model at a short length (the
stand-in for a pretrained checkpoint) -> long-context stages -> SFT -> evaluation of the model before
and after extension -> report.md. Every phase is resumable: rerunning skips finished work.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from prolong.config import Recipe, format_count, load_recipe, save_recipe
from prolong.errors import UserError
from prolong.publish import write_json

# Minutes the shipped tiny-demo's training took on 2 cores (measured, README): bf16 autocast where the CPU
# has native bf16, float32 elsewhere (AVX2). --minutes N scales the steps by N over this machine's figure.
TRAINING_MINUTES = {"bfloat16": 6.7, "float32": 15.1}
# the demo corpus' synthetic retrieval documents and passkey rows (prolong.data.retrieval_corpus)
SYNTHETIC_DOMAINS = ("retrieval", "passkey")
console = Console()


def scale_recipe(recipe: Recipe, factor: float) -> Recipe:
    """The same recipe with every stage's step count scaled by `factor` (at least one step)."""
    stages = [s.model_copy(update={"steps": max(1, round(s.num_steps * factor)), "total_tokens": None})
              for s in recipe.stages]
    return recipe.model_copy(update={"stages": stages})


class PhaseClock:
    """One status line per phase, and the time each phase took (for the report)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str, what: str):
        console.rule(f"[bold]{name}[/bold]: {what}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        console.print(f"[green]done[/green] {name} in {self.seconds[name]:.0f}s")


def _stage_exports(recipe: Recipe) -> dict[str, Path]:
    from prolong.train.stages import export_dir

    return {stage.name: export_dir(recipe, stage) for stage in recipe.stages}


def _long_texts(recipe: Recipe) -> Path:
    """A JSONL of long prose documents for perplexity by position (the recipe's first long domain
    that is not grouped, else its first long domain)."""
    long_domains = [d for d in recipe.data.domains if d.kind == "long"]
    plain = [d for d in long_domains if all(s.group_field is None for s in d.sources)]
    source = (plain or long_domains)[0].sources[0]
    return Path(source.path)


def perplexity_length(recipe: Recipe) -> int:
    """Length of the documents loss by position is measured on: the longest evaluation length, or half
    the longest pretraining length without an evaluation."""
    if recipe.eval.lengths:
        return max(recipe.eval.lengths)
    return max(s.seq_len for s in recipe.stages if s.kind == "pretrain") // 2


def perplexity_by_model(models: dict[str, Path], recipe: Recipe, seq_len: int, out: Path,
                        num_buckets: int = 16, max_docs: int = 8) -> dict[str, Any]:
    """Loss by position of each model over the same `seq_len`-token documents of the recipe's long
    prose; cached as OUT/<name>.json (its existence marks the work done)."""
    from prolong.eval.engine import load_for_generation
    from prolong.eval.perplexity import perplexity_by_position, read_texts

    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, path in models.items():
        cached = out / f"{name}.json"
        if cached.exists():
            results[name] = json.loads(cached.read_text())
            continue
        model, tokenizer = load_for_generation(str(path), "float32", "cpu")
        result = perplexity_by_position(model, tokenizer, read_texts(_long_texts(recipe)), seq_len=seq_len,
                                        last_n=seq_len - 1, num_buckets=num_buckets, max_docs=max_docs)
        write_json(cached, result, indent=1)
        results[name] = result
    return results


def check_retrieval_lengths(recipe: Recipe, tokenizer_dir: str) -> int | None:
    """The longest synthetic retrieval document or passkey row in tokens, refused when longer than the
    base stage's sequence length: the retrieval skill is taught only at the base's length, never at the
    lengths the evaluation tests beyond it. None when the recipe has no such domain."""
    from prolong.data.retrieval_corpus import longest_document_tokens
    from prolong.model.io import load_tokenizer

    domains = [d for d in recipe.data.domains if d.name in SYNTHETIC_DOMAINS]
    if not domains:
        return None
    tokenizer = load_tokenizer(tokenizer_dir)
    limit, longest = recipe.stages[0].seq_len, 0
    for domain in domains:
        tokens = max(longest_document_tokens(source.path, tokenizer) for source in domain.sources)
        if tokens > limit:
            raise UserError(
                f"domain {domain.name!r}: a synthetic document has {tokens} tokens, more than the base stage's "
                f"seq_len {limit}; the demo keeps synthetic retrieval within the base's length (shorten the "
                "documents in prolong.data.retrieval_corpus)"
            )
        longest = max(longest, tokens)
    return longest


def check_corpus_files(recipe: Recipe, corpus: Path) -> None:
    """Refuse a corpus that lacks a file the recipe reads from it: one built by an older prolong, whose
    recipe had fewer domains (the corpus phase skips when corpus/summary.json exists)."""
    for domain in recipe.data.domains:
        for source in domain.sources:
            path = Path(source.path).resolve()
            if path.is_relative_to(corpus.resolve()) and not path.exists():
                raise UserError(f"{corpus} lacks {path.name}, which domain {domain.name!r} reads: it was built "
                                "for an older recipe; use --fresh to start over, or another --out-dir")


def shipped_training_minutes(recipe: Recipe) -> float:
    """About how long the shipped tiny-demo's training takes here, by the dtype CPU training will compute in."""
    from prolong.model.loss import resolve_cpu_compute_dtype

    return TRAINING_MINUTES[resolve_cpu_compute_dtype(recipe.training.cpu_compute_dtype)]


def demo(minutes: float | None = None, recipe: str = "tiny-demo", out_dir: str = "runs/demo",
         fresh: bool = False, corpus_mb: int = 24, seed: int | None = None) -> None:
    """Run the whole ProLong recipe in miniature on this machine (no GPU, no download).

    Builds a corpus from what the machine has (Python packages as code repositories, system
    documentation as prose, short synthetic retrieval documents), trains a tokenizer and a tiny base
    model at a short length, extends it with the recipe's long-context stages and SFT, evaluates it
    before and after extension, and writes OUT_DIR/report.md. --minutes N scales every stage's steps
    by N over the shipped tiny-demo's measured training time on this kind of CPU (default: the recipe
    as shipped; on 2 cores about 7 minutes of training and 9 in all where the CPU has native bf16, 15
    and 20 in float32 on AVX2);
    --recipe runs any tiny recipe the same way; --seed N trains with another seed (data order and
    initialisation; the evaluation examples stay the recipe's); --fresh starts over.
    """
    from prolong.data.build import build_stage, resolve_tokenizer
    from prolong.data.local_corpus import build_local_corpus
    from prolong.eval.runner import run_eval
    from prolong.model.loss import native_cpu_bf16, resolve_cpu_compute_dtype
    from prolong.train.commands import train

    spec = load_recipe(recipe, output_dir=out_dir)
    if minutes is not None:
        spec = scale_recipe(spec, minutes / shipped_training_minutes(spec))
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    run_dir = Path(spec.output_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir / "recipe.yaml"
    if recipe_path.exists() and load_recipe(recipe_path).seed != spec.seed:
        raise UserError(f"{run_dir} holds a run with seed {load_recipe(recipe_path).seed}, not {spec.seed}: "
                        "use another --out-dir, or --fresh to start over")
    save_recipe(spec, recipe_path)
    clock = PhaseClock()
    started = time.perf_counter()
    console.print(f"seed {spec.seed}; evaluation examples drawn with seed {spec.eval.seed}")
    if resolve_cpu_compute_dtype(spec.training.cpu_compute_dtype) == "float32" and not native_cpu_bf16():
        console.print("this CPU has no native bf16 (AVX512-BF16 or AMX): training computes in float32, which "
                      "takes about twice as long as bf16 autocast on a CPU with it, and gives other numbers")

    with clock.phase("corpus", "gather code repositories and prose from this machine"):
        corpus = run_dir / "corpus"
        summary_path = corpus / "summary.json"
        if not summary_path.exists():
            summary = build_local_corpus(corpus, max_bytes=corpus_mb << 20)
            write_json(summary_path, summary, indent=1)
        check_corpus_files(spec, corpus)
        for part, numbers in json.loads(summary_path.read_text()).items():
            console.print(f"  {part:<9} {numbers['rows']:>7,} rows  {numbers['bytes'] / 2**20:6.1f} MiB")

    with clock.phase("tokenizer", "train a byte-level BPE on the corpus"):
        tokenizer_dir = resolve_tokenizer(spec)
        console.print(f"  tokenizer: {tokenizer_dir}")

    with clock.phase("data", "tokenize, pack and mix every stage"):
        longest = check_retrieval_lengths(spec, tokenizer_dir)
        if longest is not None:
            console.print(f"  synthetic retrieval documents: at most {longest} tokens "
                          f"(base length {spec.stages[0].seq_len})")
        for stage in spec.stages:
            build_stage(spec, stage)

    with clock.phase("train", " -> ".join(s.name for s in spec.stages)):
        train(str(recipe_path), resume=True)

    exports = _stage_exports(spec)
    # Recall: the base as evaluated (with its short SFT) against the final model. Loss by position: the
    # pretraining stages, whose next-token distribution no answer-only SFT has changed.
    before, last = spec.base_stage().name, spec.stages[-1].name
    pretrained = [s.name for s in spec.stages if s.kind == "pretrain"] or [before]
    compared = {f"before ({before})": exports[before], f"after ({last})": exports[last]}
    with clock.phase("eval", f"{', '.join(spec.eval.tasks)} at {', '.join(format_count(n) for n in spec.eval.lengths)}"):
        summaries = {}
        for label, path in compared.items():
            summaries[label] = run_eval(path, spec.eval, run_dir / "eval" / path.parent.name)

    ppl_len, base_len = perplexity_length(spec), spec.stages[0].seq_len
    with clock.phase("perplexity", f"loss by position over {format_count(ppl_len)}-token and "
                                   f"{format_count(base_len)}-token documents"):
        perplexity = perplexity_by_model({name: exports[name] for name in pretrained}, spec, ppl_len,
                                         run_dir / "perplexity")
        short = perplexity_by_model({name: exports[name] for name in dict.fromkeys((pretrained[0], pretrained[-1]))},
                                    spec, base_len, run_dir / "perplexity" / f"within-{base_len}")

    with clock.phase("report", "write report.md and its plots"):
        from prolong.report import write_report

        report = write_report(spec, run_dir, summaries, perplexity, clock.seconds,
                              total_seconds=time.perf_counter() - started, short_perplexity=short)
    print(f"report: {report}", flush=True)  # plain print: rich would wrap a long path
