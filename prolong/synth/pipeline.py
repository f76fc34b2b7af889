"""Plan the work items of a synthetic dataset, run them (resumably, with progress) and report.

Items: `pair/NNNNNN` (one generated QA pair -> a QA and/or a RAG example) and `summ/NNNNNN` (one
recursively summarized book). With N examples and shares (qa, rag, summ) the plan has
max(n_qa, n_rag) pairs (RAG reuses the QA pairs, as in the paper) and n_summ summaries.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from prolong.chat_client import ChatEndpointError
from prolong.config import Recipe, SynthSpec
from prolong.data.build import resolve_tokenizer
from prolong.data.sources import stable_seed
from prolong.data.tokenize import tokenizer_identity
from prolong.errors import UserError
from prolong.model.io import load_tokenizer
from prolong.synth.documents import LongDocument, load_documents
from prolong.synth.generators import Generator, GeneratorError, make_generator
from prolong.synth.store import SynthStore
from prolong.synth.tasks import ItemResult, item_rng, qa_item, summ_item

TASKS = ("qa", "rag", "summ")


def task_counts(num_examples: int, shares: Mapping[Any, float]) -> dict[str, int]:
    """Examples per task: `num_examples` split by `shares`, rounded by largest remainder (sums exactly)."""
    exact = {task: num_examples * shares.get(task, 0.0) for task in TASKS}
    counts = {task: math.floor(value) for task, value in exact.items()}
    by_remainder = sorted(TASKS, key=lambda t: (-(exact[t] - counts[t]), TASKS.index(t)))
    for task in by_remainder[: num_examples - sum(counts.values())]:
        counts[task] += 1
    return counts


def plan_items(counts: dict[str, int]) -> list[str]:
    """Item names, pairs and summaries interleaved in proportion (an early stop leaves a mix of both)."""
    pairs = [
        (k / max(counts["qa"], counts["rag"]), f"pair/{k:06d}")
        for k in range(max(counts["qa"], counts["rag"]))
    ]
    summaries = [(j / counts["summ"], f"summ/{j:06d}") for j in range(counts["summ"])]
    return [name for _, name in sorted(pairs + summaries)]


def fingerprint(recipe: Recipe, spec: SynthSpec, seed: int, tokenizer: Any) -> dict[str, Any]:
    """The settings that decide what an item contains (not how many items there are)."""
    return {
        "seed": seed,
        "source_domains": spec.source_domains,
        "sources": {
            name: [s.model_dump() for s in recipe.domain(name).sources] for name in spec.source_domains
        },
        "tokenizer": tokenizer_identity(tokenizer)["vocab_hash"],
        "generator": spec.generator or spec.endpoint_model,
        "max_doc_tokens": spec.max_doc_tokens,
        "min_doc_tokens": spec.min_doc_tokens,
        "max_source_documents": spec.max_source_documents,
        "chunk_tokens": spec.chunk_tokens,
        "rag_passages": spec.rag_passages,
        "max_new_tokens": spec.max_new_tokens,
    }


# Room for the instruction template, chat markers and the answer beside the document.
_TEMPLATE_TOKENS = 256


def fit_warnings(recipe: Recipe) -> list[str]:
    """SFT stages whose sequences are too short for the synthetic conversations (packing drops
    conversations longer than seq_len, so they would silently be left out of the mix)."""
    spec = recipe.synth
    if spec is None:
        return []
    readers = {d.name for d in recipe.data.domains if any(s.path == spec.output for s in d.sources)}
    need = spec.max_doc_tokens + spec.max_new_tokens + _TEMPLATE_TOKENS
    return [
        f"stage {stage.name!r} packs to seq_len={stage.seq_len}, but synthetic conversations take up to "
        f"~{need} tokens (synth.max_doc_tokens={spec.max_doc_tokens}); lower max_doc_tokens or they are dropped"
        for stage in recipe.stages
        if stage.kind == "sft" and any(e.domain in readers for e in stage.mixture) and stage.seq_len < need
    ]


@dataclass
class SynthReport:
    """What a run did: items planned, resumed and finished now, examples per task, skips, calls."""

    output: str
    planned: int = 0
    resumed: int = 0
    finished: int = 0
    malformed: Counter[str] = field(default_factory=Counter)  # item kind -> skipped items
    examples: Counter[str] = field(default_factory=Counter)  # task -> examples in the output (all runs)
    calls: int = 0
    retries: int = 0
    seconds: float = 0.0

    def table(self) -> Table:
        """A rich table of the counts (printed at the end of `prolong data synth`)."""
        table = Table(title=f"synthetic data -> {self.output}", show_header=False)
        table.add_row("items planned", f"{self.planned:,}")
        table.add_row("already done (resumed)", f"{self.resumed:,}")
        table.add_row("finished in this run", f"{self.finished:,}")
        for kind in ("pair", "summ"):
            table.add_row(f"malformed {kind} replies skipped", f"{self.malformed[kind]:,}")
        for task in TASKS:
            table.add_row(f"{task} examples in output", f"{self.examples[task]:,}")
        table.add_row("generator calls / retries", f"{self.calls:,} / {self.retries:,}")
        rate = self.finished / self.seconds if self.seconds else 0.0
        table.add_row("time", f"{self.seconds:.1f}s ({rate:.2f} items/s)")
        return table


class _ItemRunner:
    """Builds one item from its name: picks its document and calls the task."""

    def __init__(
        self,
        spec: SynthSpec,
        seed: int,
        counts: dict[str, int],
        pool: list[LongDocument],
        generator: Generator,
        tokenizer: Any,
    ) -> None:
        self.spec, self.seed, self.counts, self.pool = spec, seed, counts, pool
        self.generator, self.tokenizer = generator, tokenizer
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        # Books to summarize: a seeded permutation, so summaries use distinct books while the pool lasts.
        self.summ_order = random.Random(stable_seed(seed, "summ-order")).sample(range(len(pool)), len(pool))

    def generate(self, prompts: list[str]) -> list[str]:
        return self.generator.generate(prompts, self.spec.max_new_tokens)

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, item: str) -> ItemResult:
        kind, number = item.split("/")
        k = int(number)
        if kind == "pair":
            doc = item_rng(self.seed, item, "doc").randrange(len(self.pool))
            want_qa, want_rag = k < self.counts["qa"], k < self.counts["rag"]
            return qa_item(
                self.generate, self.pool[doc], doc, item, self.seed, want_qa, want_rag, self.spec.rag_passages
            )
        doc = self.summ_order[k % len(self.pool)]
        return summ_item(
            self.generate, self.pool[doc], doc, item, self.seed, self.count_tokens, self.spec.chunk_tokens
        )


def _results(
    run: Callable[[str], ItemResult], items: list[str], workers: int
) -> Iterator[tuple[str, ItemResult]]:
    """(item, result) as items finish. On an error, items already running are finished (and
    yielded) before the error is raised; items not started are dropped."""
    if workers <= 1:
        for item in items:  # in the main thread: Ctrl-C stops at once
            yield item, run(item)
        return
    pending = iter(items)
    error: BaseException | None = None
    with ThreadPoolExecutor(workers, thread_name_prefix="synth") as pool:
        running: dict[Future[ItemResult], str] = {}
        try:
            while True:
                while error is None and len(running) < 2 * workers:
                    queued = next(pending, None)
                    if queued is None:
                        break
                    running[pool.submit(run, queued)] = queued
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    if future.exception() is not None:
                        error = error or future.exception()
                    else:
                        yield item, future.result()
        except BaseException:
            for future in running:
                future.cancel()
            raise
    if error is not None:
        raise error


def run_synth(
    recipe: Recipe,
    num_examples: int | None = None,
    workers: int = 1,
    generator: Generator | None = None,
    show_progress: bool = True,
) -> SynthReport:
    """Generate (or finish generating) the recipe's synthetic dataset; returns the counts.

    `generator` replaces the one the recipe names (tests, or a caller holding a loaded model).
    """
    spec = recipe.synth
    if spec is None:
        raise UserError("the recipe has no 'synth' section; add one (see `prolong recipe show --schema`)")
    if (num_examples is not None and num_examples < 1) or workers < 1:
        raise UserError(f"num_examples ({num_examples}) and workers ({workers}) must be at least 1")
    for warning in fit_warnings(recipe):
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    seed = recipe.seed if spec.seed is None else spec.seed
    counts = task_counts(spec.num_examples if num_examples is None else num_examples, spec.task_shares)
    items = plan_items(counts)
    tokenizer = load_tokenizer(resolve_tokenizer(recipe, show_progress))
    store = SynthStore(spec.output, fingerprint(recipe, spec, seed, tokenizer))
    report = SynthReport(output=spec.output, planned=len(items))
    todo = [item for item in items if item not in store.done]
    report.resumed = len(items) - len(todo)
    start = time.perf_counter()
    try:
        if todo:
            with Console(stderr=True, quiet=not show_progress).status(f"reading {spec.source_domains}"):
                pool = load_documents(recipe, spec, tokenizer)
            generator = generator or make_generator(spec)
            runner = _ItemRunner(spec, seed, counts, pool, generator, tokenizer)
            _run_items(runner, todo, workers, store, report, show_progress)
    finally:
        store.close()
        report.seconds = time.perf_counter() - start
        report.retries = getattr(generator, "retries", 0)
        report.examples = _count_examples(store)
    return report


def _run_items(
    runner: _ItemRunner,
    todo: list[str],
    workers: int,
    store: SynthStore,
    report: SynthReport,
    show_progress: bool,
) -> None:
    columns = (
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} items/s"),
        TextColumn("malformed {task.fields[malformed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress) as progress:
        bar = progress.add_task("synth", total=len(todo), rate=0.0, malformed=0)
        began = time.perf_counter()
        try:
            for item, result in _results(runner, todo, workers):
                status = "malformed" if result.malformed else "ok"
                info: dict[str, Any] = {"calls": result.calls, "tasks": [e["task"] for e in result.examples]}
                if result.malformed:
                    info["reason"] = result.malformed
                store.commit(item, result.examples, status, **info)
                report.finished += 1
                report.calls += result.calls
                if result.malformed:
                    report.malformed[item.split("/")[0]] += 1
                rate = report.finished / max(time.perf_counter() - began, 1e-9)
                progress.update(bar, advance=1, rate=rate, malformed=sum(report.malformed.values()))
        except (GeneratorError, ChatEndpointError) as error:
            raise type(error)(
                f"{error}\n{report.finished} items of this run (and {report.resumed} before) are saved in "
                f"{store.output}; run the same command again to resume"
            ) from None


def _count_examples(store: SynthStore) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in store.done.values():
        if record["status"] == "ok":
            counts.update(record.get("tasks", []))
    return counts
