"""What a tiny Llama learns on 2 CPU cores within the demo's budget: retrieval and copying (issue 17).

    python benchmarks/bench_demo_learning.py [--quick] [--scale] [--ruler-probe DIR] [--carry DIR]
        [--demo-run DIR] [--out benchmarks/results/demo_learning.md]

The demo's base must learn to read its context in a few hundred steps. This measures, on synthetic
random-token data (no tokenizer, no corpus), how many steps two skills take for a Hugging Face Llama of
hidden 64, 2 layers, 2 heads, vocabulary 512, AdamW at 3e-3, 32 rows of 64 tokens a step, one thread:

- needle: noise tokens, a marker then a value of V tokens (from 10 value tokens), more noise, a query
  token, then the value. Recall = the whole value predicted exactly (greedy, teacher-forced), at the
  training length 64 and at 4x and 16x that (beyond the length trained at, the RoPE base unchanged).
- copy: random tokens with a span repeated later at a random offset; only an induction head predicts the
  repeat. Reported: mean loss on the repeated tokens (chance: ln 64 = 4.16 nats).

Each is trained twice from the same initialisation and data: loss on every token (as pretraining does),
and loss only on the answer (the value; the repeated span), as SFT-style masking would train synthetic
retrieval documents. Accuracy at a length is over 64 fresh examples (16 at 16x).

With --demo-run DIR (a `prolong demo --out-dir DIR` that has built its tokenizer and data), the same
question in the demo's own setting: the demo's base model shape, 512-token rows a step (plain causal
attention over a row), half of them the base stage's natural shards (code, prose, short), half one
needle document each in the evaluation's ruler_niah_s_1 format (noise or prose haystack, 160-512
tokens), loss on the answer only; recall at 512 and 2K on fresh needle prompts (greedy generation).
Values: the evaluation's 7-digit numbers, or a single digit (one token with the demo's tokenizer). Also
on the 2-layer, hidden-64 shape.

--scale repeats the 1-token needle with the demo's model shape at 128 and 256 tokens. --ruler-probe DIR
isolates the text format: the same regime as the random-token needle (needle batches only, loss on the
answer only, one-token value) but in the evaluation's ruler_niah_s_1 format with the demo's tokenizer,
from scratch and from DIR's base. --carry DIR fine-tunes DIR's base and its extended model (stage2-16k)
alike on those needles at <= 512 tokens and measures recall at 512-8K before and after: does a skill
taught at the base's length reach the lengths only the extended model was trained at?
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LENGTH, ROWS, LR, WARMUP = 64, 32, 3e-3, 20
NOISE, VALUES, MARKER, QUERY = 200, range(400, 410), 300, 301
ALPHABET = 64  # tokens the copy task draws from
SMALL = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 2}
DEMO = {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # tiny-demo's model.init


@dataclass
class Batch:
    tokens: torch.Tensor  # [rows, length]
    answer: torch.Tensor  # bool [rows, length]: tokens only the skill predicts


def needle_batch(gen: torch.Generator, rows: int, length: int, value_tokens: int) -> Batch:
    tokens = torch.randint(0, NOISE, (rows, length), generator=gen)
    answer = torch.zeros(rows, length, dtype=torch.bool)
    for i in range(rows):
        value = torch.randint(VALUES.start, VALUES.stop, (value_tokens,), generator=gen)
        query = length - value_tokens - 1
        at = int(torch.randint(0, query - value_tokens - 2, (1,), generator=gen))
        tokens[i, at], tokens[i, at + 1 : at + 1 + value_tokens] = MARKER, value
        tokens[i, query], tokens[i, query + 1 :] = QUERY, value
        answer[i, query + 1 :] = True
    return Batch(tokens, answer)


def copy_batch(gen: torch.Generator, rows: int, length: int) -> Batch:
    tokens = torch.randint(0, ALPHABET, (rows, length), generator=gen)
    answer = torch.zeros(rows, length, dtype=torch.bool)
    for i in range(rows):
        span = int(torch.randint(8, length // 2, (1,), generator=gen))
        start = int(torch.randint(0, length - 2 * span + 1, (1,), generator=gen))
        tokens[i, start + span : start + 2 * span] = tokens[i, start : start + span]
        answer[i, start + span + 1 : start + 2 * span] = True  # the first repeated token is not predictable
    return Batch(tokens, answer)


def make_model(seed: int, dims: dict, length: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, max_position_embeddings=length * 16, **dims)
    return LlamaForCausalLM(config)


def token_losses(model: LlamaForCausalLM, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses [rows, length - 1] and which of them are answers."""
    logits = model(input_ids=batch.tokens).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.tokens[:, 1:], reduction="none")
    return losses, batch.answer[:, 1:]


@torch.no_grad()
def needle_recall(model: LlamaForCausalLM, gen: torch.Generator, length: int, value_tokens: int, n: int) -> float:
    batch = needle_batch(gen, n, length, value_tokens)
    predicted = model(input_ids=batch.tokens).logits[:, :-1].argmax(-1)
    right = (predicted == batch.tokens[:, 1:]) | ~batch.answer[:, 1:]
    return right.all(dim=1).float().mean().item()


def train(task: str, value_tokens: int, answer_only: bool, steps: int, seed: int = 0, length: int = LENGTH,
          dims: dict = SMALL) -> dict:
    model = make_model(seed, dims, length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    data, probe = torch.Generator().manual_seed(seed + 1), torch.Generator().manual_seed(seed + 2)
    first_step_recall_50, answer_loss, other_loss = None, [], []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, step / WARMUP)
        batch = needle_batch(data, ROWS, length, value_tokens) if task == "needle" else copy_batch(data, ROWS, length)
        losses, answer = token_losses(model, batch)
        (losses[answer].mean() if answer_only else losses.mean()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        answer_loss.append(losses[answer].mean().item())
        other_loss.append(losses[~answer].mean().item())
        if task == "needle" and first_step_recall_50 is None and step % 25 == 0:
            model.eval()
            if needle_recall(model, probe, length, value_tokens, 64) >= 0.5:
                first_step_recall_50 = step
            model.train()
    model.eval()
    last = slice(-25, None)
    result = {"task": task, "value_tokens": value_tokens, "answer_only": answer_only, "steps": steps, "length": length,
              "shape": "demo's" if dims == DEMO else "hidden 64, 2 layers",
              "seconds": time.perf_counter() - started, "first_step_recall_50": first_step_recall_50,
              "answer_loss": sum(answer_loss[last]) / 25, "other_loss": sum(other_loss[last]) / 25}
    if task == "needle":
        result["recall"] = {length * k: needle_recall(model, probe, length * k, value_tokens, 64 if k < 16 else 16)
                            for k in (1, 4, 16)}
    return result


def demo_needle(tokenizer, rng, sentences: list[str], tokens: int, noise: bool, one_digit: bool):
    """(prompt ids, answer ids) of one ruler_niah_s_1 prompt, as many haystack lines as fit in `tokens`
    with the answer (sized by the evaluation's own search, prolong.eval.synthetic.fit)."""
    from prolong.data.retrieval_corpus import needle_sentence
    from prolong.eval import protocol as P
    from prolong.eval.synthetic import NOISE as HAYSTACK
    from prolong.eval.synthetic import SynthConfig, fit, niah_example
    from prolong.eval.words import number_value, word_key

    key, value = word_key(rng), str(rng.randint(0, 9)) if one_digit else number_value(rng)
    start, depth = rng.randrange(len(sentences) - 400), rng.random()
    answer = tokenizer(" " + value + ".", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    def build(lines: int) -> P.Example:
        haystack = [HAYSTACK] * lines if noise else sentences[start : start + lines]
        haystack.insert(round(depth * lines), needle_sentence(key, value))
        return niah_example("bench", "ruler_niah_s_1", "\n".join(haystack), key, [value])

    budget = SynthConfig(tokenizer, tokens, max_new_tokens=len(answer), chat=False, seed=0)
    _, example = fit(build, budget, hint=tokens // 16, hi=400)
    return P.prompt_ids(tokenizer, example, chat=False), answer


def train_demo_shape(run_dir: Path, one_digit: bool, steps: int, small: bool, seed: int = 0) -> dict:
    import random

    from prolong.config import load_recipe
    from prolong.data.format import ShardReader
    from prolong.model.io import load_tokenizer

    recipe = load_recipe(run_dir / "recipe.yaml")
    base, shape = recipe.stages[0], recipe.model.init
    tokenizer = load_tokenizer(str(run_dir / "tokenizer"))
    shards = [ShardReader(path) for path in sorted((run_dir / "data" / base.name).glob("*@*"))
              if not path.name.startswith("retrieval")]
    sentences = haystack_sentences(run_dir)
    torch.manual_seed(seed)
    dims = SMALL if small else dict(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=base.seq_len,
                                         rope_theta=shape.rope_theta, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, **dims))
    optimizer = torch.optim.AdamW(model.parameters(), lr=base.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng, length, rows = random.Random(seed), base.seq_len, 8
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = base.lr * min(1.0, step / WARMUP)
        tokens, trained = [], []
        for row in range(rows):
            if row % 2:  # a natural row: every token trained
                shard = shards[rng.randrange(len(shards))]
                tokens.append(shard[rng.randrange(len(shard))].input_ids.tolist()[:length])
                trained.append([True] * length)
                continue
            prompt, answer = demo_needle(tokenizer, rng, sentences, rng.randint(160, length), rng.random() < 0.5,
                                         one_digit)
            pad = length - len(prompt) - len(answer)
            tokens.append(prompt + answer + [tokenizer.eos_token_id] * pad)
            trained.append([False] * len(prompt) + [True] * len(answer) + [False] * pad)
        ids, mask = torch.tensor(tokens), torch.tensor(trained)
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        logits = model(input_ids=ids).logits[:, :-1]
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    probe, recall = random.Random(seed + 1), {}
    with torch.no_grad():
        for tokens_at in (length, 4 * length):
            hits = 0
            for _ in range(12):
                prompt, answer = demo_needle(tokenizer, probe, sentences, tokens_at, True, one_digit)
                out = model.generate(torch.tensor([prompt]), max_new_tokens=len(answer), do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
                hits += out[0, len(prompt) : len(prompt) + len(answer) - 1].tolist() == answer[:-1]
            recall[tokens_at] = hits / 12
    return {"shape": "hidden 64, 2 layers" if small else f"demo's ({shape.hidden_size}, {shape.num_hidden_layers} layers)",
            "value": "1 digit" if one_digit else "7 digits", "steps": steps, "recall": recall,
            "seconds": time.perf_counter() - started}


def haystack_sentences(run_dir: Path) -> list[str]:
    """Prose sentences of a demo run's corpus (what demo_needle's prose haystacks draw from)."""
    import json

    from prolong.eval.synthetic import split_sentences

    prose = [json.loads(line)["text"] for line in (run_dir / "corpus" / "prose" / "docs.jsonl").open()][:400]
    return [s for text in prose for s in split_sentences(text) if 20 <= len(s) <= 200]


def needle_finetune(model, tokenizer, sentences: list[str], steps: int, rows: int, tokens: tuple[int, int],
                    rng) -> list[float]:
    """Train on batches of one-digit ruler_niah_s_1 needle documents alone (noise haystack, `tokens` long),
    loss on the answer only; returns the loss on the digit (the token only retrieval predicts) per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    digit_loss = []
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, step / WARMUP)
        pairs = [demo_needle(tokenizer, rng, sentences, rng.randint(*tokens), True, True) for _ in range(rows)]
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.tensor([p + a + [tokenizer.eos_token_id] * (width - len(p) - len(a)) for p, a in pairs])
        digit = torch.zeros_like(ids, dtype=torch.bool)
        trained = torch.zeros_like(digit)
        for i, (p, a) in enumerate(pairs):
            digit[i, len(p)], trained[i, len(p) : len(p) + len(a)] = True, True
        losses = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[:, :-1].transpose(1, 2), ids[:, 1:],
                                                   reduction="none")
        losses[trained[:, 1:]].mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        digit_loss.append(losses[digit[:, 1:]].mean().item())
    model.eval()
    return digit_loss


@torch.no_grad()
def next_token_recall(model, tokenizer, sentences: list[str], length: int, rng, n: int = 16) -> float:
    """Share of `n` fresh one-digit noise-haystack prompts of `length` tokens whose greedy next token is the digit."""
    hits = 0
    for _ in range(n):
        prompt, answer = demo_needle(tokenizer, rng, sentences, length, True, True)
        hits += model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax().item() == answer[0]
    return hits / n


def ruler_format_probe(run_dir: Path, from_base: bool, steps: int, rows: int = 16, tokens: tuple[int, int] = (160, 256),
                       seed: int = 0) -> dict:
    """needle_finetune from scratch (the demo's shape) or from the run's base export: the random-token
    needle's regime, but the evaluation's text; recall at 512."""
    import random

    from prolong.eval.engine import load_for_generation

    model, tokenizer = load_for_generation(str(stage_export(run_dir)), "float32", "cpu")
    if not from_base:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model.config)
    sentences, started = haystack_sentences(run_dir), time.perf_counter()
    digit_loss = needle_finetune(model, tokenizer, sentences, steps, rows, tokens, random.Random(seed))
    return {"init": "the run's base" if from_base else "scratch", "steps": steps, "tokens": tokens,
            "digit_loss": sum(digit_loss[-25:]) / len(digit_loss[-25:]),
            "recall": next_token_recall(model, tokenizer, sentences, 512, random.Random(seed + 1)),
            "seconds": time.perf_counter() - started}


CARRY_LENGTHS = (512, 1024, 2048, 4096, 8192)


def carry_probe(run_dir: Path, stage: str, steps: int, tokens: tuple[int, int] = (160, 512), seed: int = 0) -> dict:
    """The same needle_finetune on a stage's export, at <= 512 tokens: recall before and after at 512-8K
    (the same prompts before and after). Run on the base and on an extended stage, it asks whether a skill
    taught at the base's length reaches lengths only the extended model was trained at."""
    import random

    from prolong.eval.engine import load_for_generation

    model, tokenizer = load_for_generation(str(stage_export(run_dir, stage)), "float32", "cpu")
    sentences, started = haystack_sentences(run_dir), time.perf_counter()

    def recall() -> dict[int, float]:
        return {n: next_token_recall(model, tokenizer, sentences, n, random.Random(1000 + n)) for n in CARRY_LENGTHS}

    before = recall()
    digit_loss = needle_finetune(model, tokenizer, sentences, steps, 16, tokens, random.Random(seed))
    return {"stage": stage, "steps": steps, "tokens": tokens, "before": before, "after": recall(),
            "digit_loss": sum(digit_loss[-25:]) / len(digit_loss[-25:]), "seconds": time.perf_counter() - started}


def stage_export(run_dir: Path, stage: str | None = None) -> Path:
    """The export of a demo run's stage (the first, the base, when None)."""
    from prolong.config import load_recipe
    from prolong.train.stages import export_dir

    recipe = load_recipe(run_dir / "recipe.yaml")
    return export_dir(recipe, recipe.stage(stage))


def scale_table(results: list[dict]) -> str:
    head = ("| model | length | steps | first step with recall >= 0.5 | recall @length | @4x | @16x | s |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['shape']} | {r['length']} | {r['steps']} | {r['first_step_recall_50'] or 'never'} | "
        + " | ".join(f"{r['recall'][r['length'] * k]:.2f}" for k in (1, 4, 16)) + f" | {r['seconds']:.0f} |"
        for r in results) + "\n"


def ruler_table(results: list[dict]) -> str:
    head = ("| start | steps | needle documents (tokens) | digit's loss, last 25 steps (nats; chance 2.30) | "
            "recall @512 | s |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['init']} | {r['steps']} | {r['tokens'][0]}-{r['tokens'][1]} | "
                             f"{r['digit_loss']:.2f} | {r['recall']:.2f} | {r['seconds']:.0f} |" for r in results) + "\n"


def carry_table(results: list[dict]) -> str:
    head = ("| model fine-tuned | steps | digit's loss, last 25 steps | recall before -> after @512 | @1K | @2K | @4K "
            "| @8K | s |\n|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['stage']} | {r['steps']} | {r['digit_loss']:.2f} | "
        + " | ".join(f"{r['before'][n]:.2f} -> {r['after'][n]:.2f}" for n in CARRY_LENGTHS) + f" | {r['seconds']:.0f} |"
        for r in results) + "\n"


def demo_table(results: list[dict]) -> str:
    head = ("| model | needle value | steps | recall @512 | @2K | s |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['shape']} | {r['value']} | {r['steps']} | {r['recall'][512]:.2f} "
                             f"| {r['recall'][2048]:.2f} | {r['seconds']:.0f} |" for r in results) + "\n"


def table(results: list[dict]) -> str:
    head = ("| task | value tokens | loss on | steps | recall @64 | @256 | @1024 | first step with recall >= 0.5 "
            "| answer loss (nats) | other tokens' loss | s |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        recall = r.get("recall", {})
        cells = [f"{recall[k]:.2f}" if k in recall else "-" for k in (LENGTH, 4 * LENGTH, 16 * LENGTH)]
        rows.append(f"| {r['task']} | {r['value_tokens'] if r['task'] == 'needle' else '-'} "
                    f"| {'answer only' if r['answer_only'] else 'every token'} | {r['steps']} | {' | '.join(cells)} "
                    f"| {r['first_step_recall_50'] or 'never'} | {r['answer_loss']:.3f} | {r['other_loss']:.3f} "
                    f"| {r['seconds']:.0f} |")
    return head + "\n".join(rows) + "\n"


def reading(results: list[dict]) -> str:
    """What this run's table says, in words (computed, so it never goes stale)."""
    needles = [r for r in results if r["task"] == "needle"]
    learned = [r for r in needles if r["first_step_recall_50"]]
    copies = {r["answer_only"]: r["answer_loss"] for r in results if r["task"] == "copy"}
    parts = [
        "Reading: with the loss on every token, "
        + ("no needle run reaches recall 0.5" if not [r for r in learned if not r["answer_only"]] else "some needle runs learn")
        + "; with the loss on the answer only, "
        + (", ".join(f"the {r['value_tokens']}-token value reaches it at step {r['first_step_recall_50']}" for r in learned)
           or "none does")
        + f". Values of more tokens need copying after the first token (an induction head): the copy task's loss on "
        f"the repeated tokens ends at {copies.get(False, float('nan')):.2f} (every token) and "
        f"{copies.get(True, float('nan')):.2f} (answer only) nats against chance {math.log(ALPHABET):.2f}"
        + (": no induction head within the run" if min(copies.values()) > math.log(ALPHABET) - 0.5 else "")
        + ". Beyond the training length recall falls (the RoPE base unchanged): "
        + ", ".join(f"{r['value_tokens']} token(s) {r['recall'][LENGTH]:.2f} -> {r['recall'][4 * LENGTH]:.2f} -> "
                    f"{r['recall'][16 * LENGTH]:.2f}" for r in needles if r["answer_only"])
        + f" at {LENGTH} -> {4 * LENGTH} -> {16 * LENGTH} tokens."
    ]
    return "".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 steps a run (a smoke run)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--demo-run", type=Path, help="also measure in a demo run's setting (see above)")
    parser.add_argument("--demo-steps", type=int, default=250)
    parser.add_argument("--scale", action="store_true",
                        help="also the 1-token needle with the demo's model shape at 128 and 256 tokens")
    parser.add_argument("--ruler-probe", type=Path, metavar="DIR",
                        help="also one-digit ruler_niah_s_1 needles alone, from scratch and from DIR's base")
    parser.add_argument("--probe-steps", type=int, default=150)
    parser.add_argument("--carry", type=Path, metavar="DIR",
                        help="also fine-tune DIR's base-512 and stage2-16k alike on one-digit needles <= 512 tokens; "
                             "recall at 512-8K before and after")
    parser.add_argument("--carry-steps", type=int, default=300)
    parser.add_argument("--carry-tokens", default="160,512", help="LO,HI: lengths of --carry's needle documents")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo_learning.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 100 if args.quick else args.steps
    runs = [("needle", 1, False), ("needle", 1, True), ("needle", 3, True), ("needle", 5, True),
            ("copy", 0, False), ("copy", 0, True)]
    results = []
    for task, value_tokens, answer_only in runs:
        results.append(train(task, value_tokens, answer_only, steps))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    text = (
        "## What a tiny model learns within the demo's budget (issue 17)\n\n"
        f"`python benchmarks/bench_demo_learning.py` ({datetime.date.today()}, {platform.machine()}, torch "
        f"{torch.__version__}, one thread). Hugging Face Llama, hidden 64, 2 layers, vocabulary 512, "
        f"{ROWS} rows of {LENGTH} random tokens a step, AdamW {LR}; each pair of rows shares initialisation and "
        f"data. Recall: the whole value right (greedy); copy: chance is ln {ALPHABET} = {math.log(ALPHABET):.2f} "
        "nats on the repeated tokens.\n\n" + table(results) + "\n" + reading(results)
    )
    if args.scale:
        scaled = [train("needle", 1, True, 200, length=length, dims=DEMO) for length in (128, 256)]
        text += ("\n### The demo's model shape, longer rows (`--scale`)\n\n"
                 f"The same needle (1-token value, loss on the answer only) with tiny-demo's shape (hidden 128, 4 "
                 f"layers), {ROWS} rows a step; recall over 64 prompts (16 at 16x).\n\n" + scale_table(scaled))
    if args.ruler_probe:
        probes = [ruler_format_probe(args.ruler_probe, from_base, args.probe_steps) for from_base in (False, True)]
        text += (f"\n### The evaluation's needle format alone (`--ruler-probe {args.ruler_probe} --probe-steps "
                 f"{args.probe_steps}`)\n\n"
                 "Batches of 16 one-digit ruler_niah_s_1 needle documents (noise haystack, the demo's tokenizer), "
                 f"nothing else, loss on the answer only, AdamW {LR}: the random-token needle's regime with the "
                 "evaluation's text. Recall: the digit is the greedy next token, over 16 fresh 512-token prompts "
                 "(chance 0.10).\n\n" + ruler_table(probes))
    if args.carry:
        lo, hi = (int(n) for n in args.carry_tokens.split(","))
        carried = [carry_probe(args.carry, stage, args.carry_steps, (lo, hi)) for stage in ("base-512", "stage2-16k")]
        text += (f"\n### Does a skill taught at 512 reach further after extension? (`--carry {args.carry} "
                 f"--carry-steps {args.carry_steps} --carry-tokens {lo},{hi}`)\n\n"
                 "The base and the extended model of one demo run, each fine-tuned alike on batches of 16 one-digit "
                 f"ruler_niah_s_1 needle documents of {lo}-{hi} tokens (noise haystack, loss on the answer only, AdamW "
                 f"{LR}); recall: the digit is the greedy next token, over 16 noise-haystack prompts per length, the "
                 "same prompts before and after (chance 0.10).\n\n" + carry_table(carried))
    if args.demo_run:
        demo = [train_demo_shape(args.demo_run, one_digit, args.demo_steps, small)
                for one_digit, small in ((False, False), (True, False), (True, True))]
        text += (f"\n### In the demo's setting (`--demo-run {args.demo_run} --demo-steps {args.demo_steps}`)\n\n"
                 "The demo's tokenizer, base shards and base learning rate; 8 rows of 512 tokens a step, half natural "
                 "text, half one ruler_niah_s_1 needle document each (loss on its answer only); recall over 12 fresh "
                 "noise-haystack prompts (chance for one digit: 0.10).\n\n" + demo_table(demo))
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
