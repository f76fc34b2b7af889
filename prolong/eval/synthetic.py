"""Synthetic long-context tasks (HELMET JSON KV, RULER needles, variable tracking, CWE, FWE, passkey).

Generated offline with the evaluated model's tokenizer. Each example grows its haystack by binary search
to the largest size whose rendered prompt fits `length - max_new_tokens` tokens, so prompt + answer
budget never exceed the target length. Every builder draws its random content prefix-stably (item i does
not depend on the size), which makes the token count monotone in the size and the search exact.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prolong.eval import protocol as P
from prolong.eval.words import essay_words, number_value, uuid4, word_key, word_list

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


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
        self.rng, self.draw = rng, draw
        self.items: list[Any] = []

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

# HELMET's data files test_k{N}_dep6.jsonl: pairs per length (scripts/generate_configs.py). Other lengths are
# filled by tokens instead.
JSON_KV_PAIRS = {4096: 50, 8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}


def json_kv_example(example_id: str, pairs: list[tuple[str, str]], gold: int, demo_idx: list[int],
                    meta: dict[str, Any] | None = None) -> P.Example:
    """A JSON KV prompt in HELMET's format: the object as context, two `Key:/Corresponding value:` demos."""
    body = ",\n ".join(f'"{k}": "{v}"' for k, v in pairs)
    context = "JSON data:\n{" + body + "}"
    demos = "\n\n".join(f"Key: {pairs[j][0]}\nCorresponding value: {pairs[j][1]}" for j in demo_idx)
    demos += "\n\n" if demo_idx else ""
    template = P.fill(P.JSON_KV_TEMPLATE, demos=demos, question=pairs[gold][0])
    return P.Example(example_id, template, context, P.JSON_KV_PREFIX, [pairs[gold][1]], dict(meta or {}))


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
            return json_kv_example(f"json_kv-{i}", kv, gold, demo_idx, {"depth": depth, "num_pairs": n})

        if cfg.length in JSON_KV_PAIRS:  # HELMET's count; a prompt over the budget is cut like HELMET's
            examples.append(build(JSON_KV_PAIRS[cfg.length]))
            continue
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

# RULER's DEPTHS: np.round(np.linspace(0, 100, 40)) as integer percents.
RULER_DEPTHS = [round(100 * i / 39) for i in range(40)]
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class NiahSpec:
    """One RULER NIAH variant (RULER's synthetic.yaml)."""

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
    """(template, answer prefix, type word): HELMET's singular template when one value is asked."""
    if spec.num_queries * spec.num_values == 1:
        return P.NIAH_SINGLE_TEMPLATE, P.NIAH_SINGLE_PREFIX, spec.value[:-1]  # RULER drops the plural "s"
    return P.NIAH_TEMPLATE, P.NIAH_PREFIX, spec.value


def niah_example(example_id: str, task: str, context: str, query: str, answers: list[str],
                 meta: dict[str, Any] | None = None) -> P.Example:
    """A NIAH prompt from its parts (HELMET's load_ruler rendering of a RULER row)."""
    template, prefix, kind = niah_templates(NIAH_SPECS[task])
    return P.Example(example_id, P.fill(template, type=kind, query=query), context,
                     P.fill(prefix, type=kind, query=query), list(answers), dict(meta or {}))


def _needle(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {kind} for {key} is: {value}."


def split_sentences(text: str) -> list[str]:
    """Sentences of prose: a split after . ! ? and whitespace (RULER uses nltk's punkt model instead)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def essay_with_needles(sentences: list[str], needles: list[tuple[float, str]]) -> str:
    """RULER's essay layout: needles between sentences at int(len * depth), joined by single spaces."""
    placed = sorted(((int(len(sentences) * d), text) for d, text in needles), key=lambda x: x[0])
    positions = [0] + [p for p, _ in placed] + [len(sentences)]
    parts: list[str] = []
    for j in range(1, len(positions)):
        parts.append(" ".join(sentences[positions[j - 1]:positions[j]]))
        if j - 1 < len(placed):
            parts.append(placed[j - 1][1])
    return " ".join(parts)


def niah(task: str, cfg: SynthConfig, num_examples: int) -> list[P.Example]:
    """RULER NIAH variants (single, multikey, multivalue, multiquery) over noise/essay/needle haystacks."""
    spec = NIAH_SPECS[task]
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
        needles = [(k, _needle(spec.value, keys[k], v)) for k in range(spec.num_keys) for v in values[k]]
        rng.shuffle(needles)
        # The first queried needle sits at the controlled depth; the others at random depths (RULER: all
        # random; essay depths drawn without replacement from its 40 percents).
        first = next(j for j, (k, _) in enumerate(needles) if k == queried[0])
        pool = [d / 100 for d in rng.sample(RULER_DEPTHS, len(needles))]
        depths = [depth if j == first else (pool[j] if spec.haystack == "essay" else rng.random())
                  for j in range(len(needles))]
        distractors = Stream(rng, lambda r: _needle(spec.value, draw_key(r), draw_value(r)))
        query_keys = [keys[k] for k in queried]
        query = query_keys[0] if len(query_keys) == 1 else ", ".join(query_keys[:-1]) + ", and " + query_keys[-1]
        answers = [v for k in queried for v in values[k]]

        def build(n: int, extra: int = 0, depths: list[float] = depths, distractors: Stream = distractors,
                  needles: list = needles, query: str = query, answers: list = answers, depth: float = depth,
                  i: int = i) -> P.Example:
            inserts = list(zip(depths, [text for _, text in needles], strict=True))
            if spec.haystack == "noise":
                context = "\n".join(_place([NOISE] * n, inserts))
            elif spec.haystack == "needle":
                # `extra` distractors go after the placed ones so a cut tail never moves a needle.
                context = "\n".join(_place(distractors.take(n), inserts) + distractors.take(n + extra)[n:])
            else:  # the essay from its start, repeated when too short (RULER)
                text = " ".join(words[j % len(words)] for j in range(n))
                context = essay_with_needles(split_sentences(text), inserts)
            return niah_example(f"{task}-{i}", task, context, query, answers, {"depth": depth, "haystack_size": n})

        n, example = fit(build, cfg, hint)
        hint = n
        if spec.haystack == "needle":  # a UUID needle can be coarser than the 1% tolerance
            example = _fill_with_prefix(cfg, example, build(n, extra=1))
        examples.append(example)
    return examples


# ---------------------------------------------------------------- passkey retrieval

# passkey: LongLoRA's and YaRN's keys; passkey_digit: one digit (0-9), within reach of the demo's tiny model.
PASSKEY_DIGITS: dict[str, int | None] = {"passkey": None, "passkey_digit": 1}


def passkey_example(example_id: str, key: str, garbage_before: int, garbage_after: int,
                    meta: dict[str, Any] | None = None) -> P.Example:
    """A passkey prompt: `garbage_before` and `garbage_after` characters of the garbage sentence repeated
    (space-joined, cut by characters as Landmark Attention and LongLoRA cut it) around the information line."""
    repeats = max(garbage_before, garbage_after) // len(P.PASSKEY_GARBAGE) + 1
    garbage = " ".join([P.PASSKEY_GARBAGE] * repeats)
    context = "\n".join([garbage[:garbage_before], P.PASSKEY_LINE.format(key=key), garbage[:garbage_after]])
    return P.Example(example_id, P.PASSKEY_TEMPLATE, context, P.PASSKEY_PREFIX, [key], dict(meta or {}),
                     separator=" ")


def passkey(task: str, cfg: SynthConfig, num_examples: int, digits: int | None) -> list[P.Example]:
    """Passkey retrieval: a key between 1 and 50000 (LongLoRA's and YaRN's draw), or of `digits` digits,
    at the example's depth in as many characters of garbage as fit."""
    examples, hint = [], 3 * cfg.budget
    for i in range(num_examples):
        rng, depth = cfg.rng(task, i), cfg.depth(i, num_examples)
        low, high = (1, 50000) if digits is None else (0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        key = str(rng.randint(low, high))

        def build(n: int, key: str = key, depth: float = depth, i: int = i) -> P.Example:
            before = round(depth * n)
            return passkey_example(f"{task}-{i}", key, before, n - before, {"depth": depth, "haystack_chars": n})

        hint, example = fit(build, cfg, hint)
        examples.append(example)
    return examples


# ---------------------------------------------------------------- variable tracking

# RULER's own task template and answer prefix (data/synthetic/constants.py), used for its worked examples.
RULER_VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
RULER_VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assigned the value {query}, they are: "
)
RULER_CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
RULER_CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
VT_EXAMPLE_TOKENS = 500  # RULER sizes its worked example to 500 tokens


def _vt_chain(rng: random.Random, num_hops: int, name_length: int = 5) -> tuple[list[str], list[str], str]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_length))
        names.append(name) if name not in names else None
    value = str(rng.randint(10000, 99999))
    # RULER's hop lines end with a space: "VAR B = VAR A ".
    lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, lines, value


def vt_context(lines: list[str], n: int, positions: list[int]) -> str:
    """`n` noise sentences with the chain lines inserted in order at sorted `positions` (RULER's layout)."""
    sentences = [NOISE] * n
    for j, position in enumerate(sorted(positions)):
        sentences.insert(position + j, lines[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def vt_example(example_id: str, context: str, value: str, num_v: int, example: str, answers: list[str],
               meta: dict[str, Any] | None = None) -> P.Example:
    """A VT prompt from its parts: worked example, HELMET's template and prefix."""
    template = P.fill(P.VT_TEMPLATE, example=example + "\n\n" if example else "", query=value)
    prefix = P.fill(P.VT_PREFIX, num_v=str(num_v), query=value)
    return P.Example(example_id, template, context, prefix, list(answers), dict(meta or {}))


def _vt_worked_example(cfg: SynthConfig, rng: random.Random, num_hops: int) -> str:
    """RULER's one-shot example: 3-letter names, noise sized to 500 tokens, answered after its prefix."""
    names, lines, value = _vt_chain(rng, num_hops, name_length=3)
    draws = [rng.random() for _ in lines]

    def text(n: int) -> str:
        positions = rng_positions(draws, n)
        return (RULER_VT_TEMPLATE.replace("{context}", vt_context(lines, n, positions)).replace("{query}", value)
                + P.fill(RULER_VT_PREFIX, num_v=str(num_hops + 1), query=value) + " " + " ".join(names))

    lo, hi = 1, 1
    while len(cfg.tokenizer(text(hi * 2), add_special_tokens=False)["input_ids"]) <= VT_EXAMPLE_TOKENS:
        hi *= 2
    hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if len(cfg.tokenizer(text(mid), add_special_tokens=False)["input_ids"]) \
            <= VT_EXAMPLE_TOKENS else (lo, mid)
    return text(lo)


def rng_positions(draws: list[float], n: int) -> list[int]:
    """Distinct insertion indices in [0, n) from uniform draws (RULER: random.sample(range(n), k))."""
    taken: list[int] = []
    for d in draws:
        p = min(int(d * n), n - 1)
        while p in taken and len(taken) < n:
            p = (p + 1) % n
        taken.append(p)
    return taken


def variable_tracking(cfg: SynthConfig, num_examples: int, num_hops: int = 4) -> list[P.Example]:
    """RULER VT: find every variable that a chain of assignments gives one value, after a worked example."""
    examples, hint = [], 64
    for i in range(num_examples):
        rng, depth = cfg.rng("ruler_vt", i), cfg.depth(i, num_examples)
        worked = _vt_worked_example(cfg, rng, num_hops)
        names, lines, value = _vt_chain(rng, num_hops)
        # The chain starts at the controlled depth and ends at random later lines, keeping its order.
        draws = [depth] + sorted(depth + (1 - depth) * rng.random() for _ in lines[1:])

        def build(n: int, lines: list = lines, draws: list = draws, names: list = names, value: str = value,
                  worked: str = worked, depth: float = depth, i: int = i) -> P.Example:
            context = vt_context(lines, n, rng_positions(draws, n)) if n >= len(lines) else "\n".join(lines)
            return vt_example(f"ruler_vt-{i}", context, value, num_hops + 1, worked, names,
                              {"depth": depth, "haystack_size": n})

        n, example = fit(build, cfg, hint)
        hint = n
        examples.append(example)
    return examples


# ---------------------------------------------------------------- common / frequent words


def _vocabulary() -> list[str]:
    """RULER's CWE words: wonderwords' nouns, adjectives and verbs, de-duplicated and sorted."""
    return sorted(set(word_list("noun")) | set(word_list("adjective")) | set(word_list("verb")))


def numbered(words: list[str]) -> str:
    """RULER's numbered list: '1. w 2. w ...' on one line."""
    return " ".join(f"{j + 1}. {w}" for j, w in enumerate(words))


def cwe_example(example_id: str, context: str, example: str, answers: list[str],
                meta: dict[str, Any] | None = None) -> P.Example:
    """A CWE prompt from its parts: worked example, HELMET's template and prefix."""
    template = P.fill(P.CWE_TEMPLATE, example=example + "\n\n" if example else "")
    return P.Example(example_id, template, context, P.CWE_PREFIX, list(answers), dict(meta or {}))


def common_words(cfg: SynthConfig, num_examples: int, num_common: int = 10) -> list[P.Example]:
    """RULER CWE: a numbered word list where 10 words appear 30 times and the others 3 (6 and 1 below 4K)."""
    vocab = _vocabulary()
    short = cfg.length < 4096
    freq_common, freq_rare = (6, 1) if short else (30, 3)
    ex_words, ex_common, ex_rare = (20, 3, 1) if short else (40, 10, 3)
    examples, hint = [], 32
    for i in range(num_examples):
        rng = cfg.rng("ruler_cwe", i)
        ex = rng.sample(vocab, ex_words)
        ex_list = ex[:num_common] * ex_common + ex[num_common:] * ex_rare
        rng.shuffle(ex_list)
        worked = (RULER_CWE_TEMPLATE.replace("{context}", numbered(ex_list)) + RULER_CWE_PREFIX + " "
                  + numbered(ex[:num_common]))
        words = rng.sample(vocab, len(vocab))
        common, rare = words[:num_common], words[num_common:]
        shuffle_seed = rng.random()

        def build(n: int, common: list = common, rare: list = rare, seed: float = shuffle_seed,
                  worked: str = worked, i: int = i) -> P.Example:
            items = common * freq_common + rare[:n] * freq_rare
            random.Random(seed).shuffle(items)
            return cwe_example(f"ruler_cwe-{i}", numbered(items), worked, common,
                               {"freq_common": freq_common, "num_rare": n})

        n, example = fit(build, cfg, hint, hi=len(rare))
        hint = max(n, 1)
        examples.append(example)
    return examples


def fwe_counts(num_words: int, vocab_size: int, alpha: float = 2.0) -> list[int]:
    """RULER's deterministic Zipf counts: floor(num_words * k^-alpha / zeta(alpha)) for ranks k = 1..V."""
    zeta = math.pi ** 2 / 6 if alpha == 2.0 else sum(k ** -alpha for k in range(1, 1_000_000))
    return [int(num_words * k ** -alpha / zeta) for k in range(1, vocab_size + 1)]


def fwe_example(example_id: str, context: str, answers: list[str], meta: dict[str, Any] | None = None) -> P.Example:
    """An FWE prompt from its parts (HELMET's template and prefix)."""
    return P.Example(example_id, P.FWE_TEMPLATE, context, P.FWE_PREFIX, list(answers), dict(meta or {}))


def frequent_words(cfg: SynthConfig, num_examples: int, word_length: int = 6) -> list[P.Example]:
    """RULER FWE: 6-letter coded words with Zipf counts; the top word is '...', the answer the next three.

    RULER grows the word count from budget/6 in steps of budget/32 and keeps the last count below the
    budget; we do the same, so RULER's length distribution (up to one step short of the budget) is kept.
    """
    vocab_size = max(cfg.budget // 50, 4)
    examples = []
    for i in range(num_examples):
        rng = cfg.rng("ruler_fwe", i)
        coded: set[str] = set()
        while len(coded) < vocab_size:
            coded.add("".join(rng.choices(string.ascii_lowercase, k=word_length)))
        vocab = sorted(coded)
        rng.shuffle(vocab)
        vocab[0] = "..."  # the top-ranked word is noise
        shuffle_seed = rng.random()

        def build(n: int, vocab: list = vocab, seed: float = shuffle_seed, i: int = i) -> P.Example:
            words = [w for w, c in zip(vocab, fwe_counts(n, len(vocab)), strict=True) for _ in range(c)]
            random.Random(seed).shuffle(words)
            return fwe_example(f"ruler_fwe-{i}", " ".join(words), vocab[1:4], {"num_words": n})

        def tokens(n: int) -> int:
            return len(P.prompt_ids(cfg.tokenizer, build(n), cfg.chat))

        n, step = cfg.budget // 6, max(cfg.budget // 32, 1)
        while tokens(n) < cfg.budget:
            n += step
        n -= step
        while n > 0 and tokens(n) > cfg.budget:
            n -= step
        examples.append(build(max(n, 1)))
    return examples


def build_synthetic(task: str, cfg: SynthConfig, num_examples: int) -> list[P.Example]:
    """Examples of one synthetic task."""
    if task == "json_kv":
        return json_kv(cfg, num_examples)
    if task in NIAH_SPECS:
        return niah(task, cfg, num_examples)
    if task in PASSKEY_DIGITS:
        return passkey(task, cfg, num_examples, PASSKEY_DIGITS[task])
    if task == "ruler_vt":
        return variable_tracking(cfg, num_examples)
    if task == "ruler_cwe":
        return common_words(cfg, num_examples)
    if task == "ruler_fwe":
        return frequent_words(cfg, num_examples)
    raise KeyError(task)
