"""`prolong data synth`: the command-line face of synthetic data generation."""

from __future__ import annotations

from rich.console import Console

from prolong.config import load_recipe


def synth(recipe: str, num_examples: int | None = None, workers: int = 1) -> None:
    """Generate synthetic long instruction data (QA, RAG, summarization) for SFT.

    Reads the long documents of the recipe's `synth.source_domains`, asks the instruct model named by
    `synth.generator` (a local HF checkpoint) or `synth.endpoint` (an OpenAI-compatible server, e.g.
    vLLM) to write question/answer pairs about random chunks and recursive summaries of whole books,
    and appends chat conversations ({"messages": [...], "task": ...}) to `synth.output`.

    Resumable: finished items are recorded in <output>.journal and never regenerated; run the same
    command again after an interruption or an endpoint failure. Malformed replies are counted and
    skipped. To train on the data, add an sft domain reading `synth.output` and give it a share of
    tokens in the SFT stage's mixture (the paper tried 1%, 3%, 10%, 50%).

    --num-examples overrides synth.num_examples (raising it later adds items to the same output);
    --workers runs that many items at once (useful with an endpoint; a local model serves one at a time).
    """
    from prolong.synth.pipeline import run_synth

    report = run_synth(load_recipe(recipe), num_examples=num_examples, workers=workers)
    Console(stderr=True).print(report.table())
