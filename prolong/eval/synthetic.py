"""Synthetic long-context tasks (HELMET JSON KV, RULER needles, variable tracking, CWE, FWE).

Generated offline with the evaluated model's tokenizer. Each example grows its haystack by binary search
to the largest size whose rendered prompt fits `length - max_new_tokens` tokens, so prompt + answer
budget never exceed the target length. Every builder draws its random content prefix-stably (item i does
not depend on the size), which makes the token count monotone in the size and the search exact.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prolong.eval import protocol as P
from prolong.eval.words import essay_words, number_value, uuid4, word_key, word_list

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ESSAY_DEPTHS = [round(i / 39, 4) for i in range(40)]  # RULER: 40 evenly spaced depths


@dataclass(frozen=True)
class SynthConfig:
    """Options shared by all synthetic builders."""

    tokenizer: Any
    length: int
    max_new_tokens: int
    chat: bool
    seed: int
    depths: tuple[float, ...] | None = None  # needle depths cycled over examples (None: spread evenly)
    essay_path: str | None = None

    @property
    def budget(self) -> int:
        return self.length - self.max_new_tokens

    def rng(self, task: str, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{task}/{self.length}/{index}")

    def depth(self, index: int, num_examples: int) -> float:
        if self.depths:
            return self.depths[index % len(self.depths)]
        return round(index / max(1, num_examples - 1), 4) if num_examples > 1 else 0.5


class Stream:
    """An endless, prefix-stable sequence of random items drawn on demand."""

    def __init__(self, rng: random.Random, draw: Callable[[random.Random], Any]) -> None:
        self.rng, self.draw, self.items = rng, draw, []

    def take(self, n: int) -> list[Any]:
        while len(self.items) < n:
            self.items.append(self.draw(self.rng))
        return self.items[:n]


def fit(build: Callable[[int], P.Example], cfg: SynthConfig, hint: int, lo: int = 0,
        hi: int = 1 << 40) -> tuple[int, P.Example]:
    """Largest size lo <= n <= hi whose prompt fits the budget (exponential then binary search from `hint`)."""

    def fits(n: int) -> bool:
        return len(P.prompt_ids(cfg.tokenizer, build(n), cfg.chat)) <= cfg.budget

    if not fits(lo):
        raise ValueError(f"length {cfg.length} is too short for this task even with an empty haystack")
    # Sizes of consecutive examples differ by a few percent: bracket the hint with small, doubling steps.
    step = max(1, hint // 64)
    probe = min(max(hint, lo + 1), hi)
    if fits(probe):
        good, bad = probe, None
        while bad is None:
            if good == hi:
                return hi, build(hi)
            probe = min(good + step, hi)
            if fits(probe):
                good, step = probe, step * 2
            else:
                bad = probe
    else:
        good, bad = lo, probe
        while bad - step > lo:
            if fits(bad - step):
                good = bad - step
                break
            bad, step = bad - step, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good, build(good)


def _place(items: list[str], inserts: list[tuple[float, str]]) -> list[str]:
    """Insert strings at fractional depths of a list (later depths first so indices stay valid)."""
    out = list(items)
    for depth, text in sorted(inserts, key=lambda x: -x[0]):
        out.insert(round(depth * len(items)), text)
    return out


# ---------------------------------------------------------------- JSON KV (HELMET)


def json_kv(cfg: SynthConfig, num_examples: int) -> list[P.Example]:
    """HELMET JSON KV: retrieve the value of one UUID key from a JSON object of UUID pairs."""
    examples, hint = [], 64
    for i in range(num_examples):
        rng, depth = cfg.rng("json_kv", i), cfg.depth(i, num_examples)
        picks = (rng.random(), rng.random())
        pairs = Stream(rng, lambda r: (uuid4(r), uuid4(r)))

        def build(n: int, extra: int = 0, depth: float = depth, picks: tuple = picks, pairs: Stream = pairs,
                  i: int = i) -> P.Example:
            kv = pairs.take(n + extra)
            gold = round(depth * (n - 1))
            others = [j for j in range(n) if j != gold]
            demo_idx = sorted({others[int(p * len(others))] for p in picks})
            demo_idx = demo_idx if len(demo_idx) == 2 else others[:2]
            body = ",\n ".join(f'"{k}": "{v}"' for k, v in kv)
            context = "JSON data:\n{" + body + "}"
            demos = "".join(f"Key: {kv[j][0]}\nCorresponding value: {kv[j][1]}\n\n" for j in demo_idx)
            template = P.fill(P.JSON_KV_TEMPLATE, demos=demos, question=kv[gold][0])
            return P.Example(f"json_kv-{i}", template, context, P.JSON_KV_PREFIX, [kv[gold][1]],
                             {"depth": depth, "num_pairs": n})

        n, example = fit(build, cfg, hint, lo=3)
        hint = n
        # A UUID pair is tens of tokens, coarser than the 1% tolerance at 4K: fill the gap with the start
        # of one more pair, as HELMET's context truncation would (the gold pair is among the complete ones).
        examples.append(_fill_with_prefix(cfg, example, build(n, extra=1)))
    return examples


def _fill_with_prefix(cfg: SynthConfig, fitted: P.Example, bigger: P.Example) -> P.Example:
    """`bigger` with its context cut at the longest character prefix that fits (at least `fitted`'s)."""
    common = 0
    while common < min(len(fitted.context), len(bigger.context)) and \
            fitted.context[common] == bigger.context[common]:
        common += 1

    def fits(chars: int) -> bool:
        ids = P.prompt_ids(cfg.tokenizer, bigger, cfg.chat, context=bigger.context[:chars])
        return len(ids) <= cfg.budget

    lo, hi = common, len(bigger.context)
    if not fits(lo):
        return fitted
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return P.Example(bigger.id, bigger.template, bigger.context[:lo], bigger.answer_prefix, bigger.answers,
                     {**bigger.meta, "truncated": True})


# ---------------------------------------------------------------- RULER needle in a haystack


@dataclass(frozen=True)
class NiahSpec:
    """One RULER NIAH variant."""

    haystack: str  # noise | essay | needle
    key: str = "words"  # words | uuids
    value: str = "numbers"  # numbers | uuids
    num_keys: int = 1  # needles with different keys (distractors when > queries)
    num_values: int = 1  # values per key
    num_queries: int = 1  # keys asked about


NIAH_SPECS: dict[str, NiahSpec] = {
    "ruler_niah_s_1": NiahSpec("noise"),
    "ruler_niah_s_2": NiahSpec("essay"),
    "ruler_niah_s_3": NiahSpec("essay", value="uuids"),
    "ruler_niah_mk_1": NiahSpec("essay", num_keys=4),
    "ruler_niah_mk_2": NiahSpec("needle"),
    "ruler_niah_mk_3": NiahSpec("needle", key="uuids", value="uuids"),
    "ruler_niah_mv": NiahSpec("essay", num_values=4),
    "ruler_niah_mq": NiahSpec("essay", num_keys=4, num_queries=4),
}


def niah_templates(spec: NiahSpec) -> tuple[str, str, str]:
    """(template, answer prefix, type word); RULER's singular rewrite when one value is asked."""
    template, prefix, kind = P.NIAH_TEMPLATE, P.NIAH_PREFIX, spec.value
    if spec.num_queries * spec.num_values == 1:
        # RULER rewrites the template text (before filling) for a single answer.
        def singular(text: str) -> str:
            return text.replace("Some", "A").replace("are all", "is").replace("are", "is")

        template, prefix, kind = singular(template), singular(prefix), kind[:-1]
    return template, prefix, kind


def _needle(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {kind} for {key} is: {value}."


def niah(task: str, cfg: SynthConfig, num_examples: int) -> list[P.Example]:
    """RULER NIAH variants (single, multikey, multivalue, multiquery) over noise/essay/needle haystacks."""
    spec = NIAH_SPECS[task]
    template, prefix, kind = niah_templates(spec)
    words = essay_words(cfg.essay_path) if spec.haystack == "essay" else ()
    draw_key = uuid4 if spec.key == "uuids" else word_key
    draw_value = uuid4 if spec.value == "uuids" else number_value
    examples, hint = [], 64
    for i in range(num_examples):
        rng, depth = cfg.rng(task, i), cfg.depth(i, num_examples)
        keys: list[str] = []
        while len(keys) < spec.num_keys:
            k = draw_key(rng)
            keys.append(k) if k not in keys else None
        values = [[draw_value(rng) for _ in range(spec.num_values)] for _ in keys]
        queried = rng.sample(range(spec.num_keys), spec.num_queries)
        # The first queried needle sits at the controlled depth; the others at random essay/line depths.
        needles = [(k, _needle(spec.value, keys[k], v)) for k in range(spec.num_keys) for v in values[k]]
        rng.shuffle(needles)
        first = next(j for j, (k, _) in enumerate(needles) if k == queried[0])
        pool = ESSAY_DEPTHS if spec.haystack == "essay" else None
        depths = [depth if j == first else (rng.choice(pool) if pool else rng.random()) for j in range(len(needles))]
        offset = rng.randrange(len(words)) if words else 0
        distractors = Stream(rng, lambda r: _needle(spec.value, draw_key(r), draw_value(r)))
        query_keys = [keys[k] for k in queried]
        query = query_keys[0] if len(query_keys) == 1 else ", ".join(query_keys[:-1]) + ", and " + query_keys[-1]
        answers = [v for k in queried for v in values[k]]
        filled = P.fill(template, type=kind, query=query)
        filled_prefix = P.fill(prefix, type=kind, query=query)

        def build(n: int, extra: int = 0, depths: list[float] = depths, offset: int = offset, distractors: Stream = distractors,
                  needles: list = needles, filled: str = filled, filled_prefix: str = filled_prefix,
                  answers: list = answers, depth: float = depth, i: int = i) -> P.Example:
            inserts = list(zip(depths, [text for _, text in needles]))
            if spec.haystack == "noise":
                context = "\n".join(_place([NOISE] * n, inserts))
            elif spec.haystack == "needle":
                # `extra` distractors go after the placed ones so a cut tail never moves a needle.
                context = "\n".join(_place(distractors.take(n), inserts) + distractors.take(n + extra)[n:])
            else:
                chunk = [words[(offset + j) % len(words)] for j in range(n)]
                context = " ".join(_place(chunk, inserts))
            return P.Example(f"{task}-{i}", filled, context, filled_prefix, list(answers),
                             {"depth": depth, "haystack_size": n})

        n, example = fit(build, cfg, hint)
        hint = n
        if spec.haystack == "needle":  # a UUID needle can be coarser than the 1% tolerance
            example = _fill_with_prefix(cfg, example, build(n, extra=1))
        examples.append(example)
    return examples


# ---------------------------------------------------------------- variable tracking


def _vt_chain(rng: random.Random, num_hops: int) -> tuple[list[str], list[str], str]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        names.append(name) if name not in names else None
    value = str(rng.randint(10000, 99999))
    lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(num_hops)]
    return names, lines, value


def _vt_text(lines: list[str], n: int, positions: list[float]) -> str:
    return "\n".join(_place([NOISE] * n, list(zip(positions, lines))))


def variable_tracking(cfg: SynthConfig, num_examples: int, num_hops: int = 4) -> list[P.Example]:
    """RULER VT: find every variable that a chain of assignments gives one value, after a worked example."""
    examples, hint = [], 64
    for i in range(num_examples):
        rng, depth = cfg.rng("ruler_vt", i), cfg.depth(i, num_examples)
        ex_names, ex_lines, ex_value = _vt_chain(rng, num_hops)
        ex_positions = sorted(rng.random() for _ in ex_lines)
        example_text = (
            P.fill(P.VT_TEMPLATE, query=ex_value).replace("{context}", _vt_text(ex_lines, 5, ex_positions))
            + P.fill(P.VT_PREFIX, num_v=str(num_hops + 1), query=ex_value) + " ".join(ex_names)
        )
        names, lines, value = _vt_chain(rng, num_hops)
        # The chain starts at the controlled depth and ends at a random later one, keeping its order.
        positions = sorted([depth] + [depth + (1 - depth) * rng.random() for _ in lines[1:]])
        template = example_text + "\n\n" + P.fill(P.VT_TEMPLATE, query=value)
        prefix = P.fill(P.VT_PREFIX, num_v=str(num_hops + 1), query=value)

        def build(n: int, lines: list = lines, positions: list = positions, template: str = template,
                  prefix: str = prefix, names: list = names, depth: float = depth, i: int = i) -> P.Example:
            return P.Example(f"ruler_vt-{i}", template, _vt_text(lines, n, positions), prefix, list(names),
                             {"depth": depth, "haystack_size": n})

        n, example = fit(build, cfg, hint)
        hint = n
        examples.append(example)
    return examples


# ---------------------------------------------------------------- common / frequent words


def _vocabulary() -> list[str]:
    return sorted(set(word_list("noun")) | set(word_list("adjective")) | set(word_list("verb")))


def common_words(cfg: SynthConfig, num_examples: int, num_common: int = 10) -> list[P.Example]:
    """RULER CWE: a numbered word list where 10 words appear 30 times and the others 3 times."""
    vocab = _vocabulary()
    examples, hint = [], 32
    for i in range(num_examples):
        rng = cfg.rng("ruler_cwe", i)
        words = rng.sample(vocab, len(vocab))
        common, rare = words[:num_common], words[num_common:]
        shuffle_seed = rng.random()

        def build(n: int, freq_common: int, common: list = common, rare: list = rare,
                  seed: float = shuffle_seed, i: int = i) -> P.Example:
            items = common * freq_common + rare[:n] * 3
            random.Random(seed).shuffle(items)
            context = "\n".join(f"{j + 1}. {w}" for j, w in enumerate(items))
            return P.Example(f"ruler_cwe-{i}", P.CWE_TEMPLATE, context, P.CWE_PREFIX, list(common),
                             {"freq_common": freq_common, "num_rare": n})

        # Short lengths cannot hold 10 x 30 copies: lower the common frequency (still above the rare 3).
        for freq in (30, 20, 10, 6, 4):
            try:
                n, example = fit(lambda m, f=freq: build(m, f), cfg, hint, hi=len(rare))
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"length {cfg.length} is too short for ruler_cwe")
        hint = max(n, 1)
        examples.append(example)
    return examples


def frequent_words(cfg: SynthConfig, num_examples: int, alpha: float = 2.0, vocab_size: int = 800) -> list[P.Example]:
    """RULER FWE: Zipf-distributed coded words; the top word is hidden as '....', answer = the next three."""
    examples, hint = [], 256
    weights = [1 / (rank**alpha) for rank in range(1, vocab_size + 1)]
    for i in range(num_examples):
        rng = cfg.rng("ruler_fwe", i)
        coded: list[str] = []
        while len(coded) < vocab_size:
            w = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 6)))
            coded.append(w) if w not in coded else None
        coded[0] = "...."
        stream = Stream(rng, lambda r: r.choices(range(vocab_size), weights=weights)[0])

        def build(n: int, stream: Stream = stream, coded: list = coded, i: int = i) -> P.Example:
            ranks = stream.take(n)
            counts = Counter(r for r in ranks if r != 0)
            # Ties broken by Zipf rank so the answer is deterministic.
            top = sorted(counts, key=lambda r: (-counts[r], r))[:3]
            return P.Example(f"ruler_fwe-{i}", P.FWE_TEMPLATE, " ".join(coded[r] for r in ranks), P.FWE_PREFIX,
                             [coded[r] for r in top], {"num_words": n})

        n, example = fit(build, cfg, hint, lo=50)
        hint = n
        examples.append(example)
    return examples


def build_synthetic(task: str, cfg: SynthConfig, num_examples: int) -> list[P.Example]:
    """Examples of one synthetic task."""
    if task == "json_kv":
        return json_kv(cfg, num_examples)
    if task in NIAH_SPECS:
        return niah(task, cfg, num_examples)
    if task == "ruler_vt":
        return variable_tracking(cfg, num_examples)
    if task == "ruler_cwe":
        return common_words(cfg, num_examples)
    if task == "ruler_fwe":
        return frequent_words(cfg, num_examples)
    raise KeyError(task)
