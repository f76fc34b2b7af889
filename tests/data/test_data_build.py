"""End to end: recipe -> shards (resumable), deterministic tokenization, stats/peek, local corpus."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from prolong.config import DomainSpec, SourceSpec, recipe_from_dict
from prolong.data.build import build_stage, resolve_tokenizer
from prolong.data.format import ShardReader
from prolong.data.mixture import StageMixture
from prolong.data.sources import DocumentStream
from prolong.data.tokenize import TokenizedDocs, tokenize_documents
from prolong.errors import UserError


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def words(rng: random.Random, n: int) -> str:
    vocab = ["json", "encode", "value", "def", "return", "self", "string", "object", "list", "the", "of"]
    return " ".join(rng.choice(vocab) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    rng = random.Random(0)
    code = [
        {"repo": f"r{r}", "path": f"m{f}.py", "text": words(rng, rng.randint(20, 400))}
        for r in range(30)
        for f in range(4)
    ]
    write_jsonl(root / "code.jsonl", code)
    write_jsonl(root / "web.jsonl", [{"text": words(rng, rng.randint(5, 80))} for _ in range(300)])
    chats = [
        {
            "messages": [
                {"role": "user", "content": words(rng, 8)},
                {"role": "assistant", "content": words(rng, rng.randint(3, 60))},
            ]
        }
        for _ in range(100)
    ]
    write_jsonl(root / "chat.jsonl", chats)
    return root


def recipe(corpus: Path, out: Path, tokenizer: str | None, attention: str = "document", **tok):
    return recipe_from_dict(
        {
            "name": "t",
            "output_dir": str(out / "run"),
            "model": {"init": {}},
            "tokenizer": {"path": tokenizer, **tok} if tokenizer else tok,
            "data": {
                "shard_dir": str(out / "data"),
                "domains": [
                    {
                        "name": "code",
                        "kind": "long",
                        "sources": [
                            {
                                "type": "jsonl",
                                "path": str(corpus / "code.jsonl"),
                                "group_field": "repo",
                                "name_field": "path",
                            }
                        ],
                    },
                    {
                        "name": "web",
                        "kind": "short",
                        "sources": [{"type": "jsonl", "path": str(corpus / "web.jsonl")}],
                    },
                    {
                        "name": "chat",
                        "kind": "sft",
                        "sources": [{"type": "jsonl", "path": str(corpus / "chat.jsonl")}],
                    },
                ],
            },
            "stages": [
                {
                    "name": "s1",
                    "seq_len": 256,
                    "tokens_per_step": 1024,
                    "steps": 4,
                    "lr": 1e-3,
                    "min_lr": 0,
                    "attention": attention,
                    "mixture": [
                        {"domain": "code", "proportion": 0.3},
                        {"domain": "code", "proportion": 0.3, "doc_len": 64},
                        {"domain": "web", "proportion": 0.4},
                    ],
                },
                {
                    "name": "sft",
                    "kind": "sft",
                    "seq_len": 256,
                    "tokens_per_step": 1024,
                    "steps": 4,
                    "lr": 1e-4,
                    "min_lr": 0,
                    "mixture": [{"domain": "chat", "proportion": 1.0}],
                },
            ],
        }
    )


def test_build_resumable_and_readable(tmp_path, corpus, tokenizer_dir, tokenizer) -> None:
    r = recipe(corpus, tmp_path, str(tokenizer_dir))
    metas = build_stage(r, r.stage("s1"), workers=1, show_progress=False)
    assert {(m["domain"], m["doc_len"]) for m in metas} == {("code", 256), ("code", 64), ("web", 256)}
    shard = Path(r.data.shard_dir) / "s1" / "code@64"
    stamp = (shard / "tokens.bin").stat().st_mtime_ns
    build_stage(r, r.stage("s1"), workers=1, show_progress=False)  # finished shards are skipped
    assert (shard / "tokens.bin").stat().st_mtime_ns == stamp
    code64 = ShardReader(shard)
    assert all(
        len(code64.doc_lens_of(i)) == 4 and (code64.doc_lens_of(i) == 64).all() for i in range(len(code64))
    )
    web = ShardReader(Path(r.data.shard_dir) / "s1" / "web@256")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    seq = web[1]
    for start in seq.doc_starts[1:]:
        assert (
            seq.input_ids[start] == bos and seq.input_ids[start - 1] == eos
        )  # each document framed BOS..EOS
    mixture = StageMixture.open(r.data.shard_dir, r.stage("s1"), r.seed, tokenizer=tokenizer)
    assert len(mixture[0].input_ids) == 256
    sft = build_stage(r, r.stage("sft"), workers=1, show_progress=False)[0]
    reader = ShardReader(Path(r.data.shard_dir) / "sft" / "chat@256")
    assert (
        sft["has_loss_mask"]
        and 0 < sum(int(reader[i].loss_mask.sum()) for i in range(len(reader))) < sft["num_tokens"]
    )
    assert all(reader.seq_len_of(i) <= 256 for i in range(len(reader)))


def test_cross_document_mode_keeps_boundaries_as_metadata(tmp_path, corpus, tokenizer_dir) -> None:
    r = recipe(corpus, tmp_path, str(tokenizer_dir), attention="cross_document")
    build_stage(r, r.stage("s1"), workers=1, show_progress=False)
    code = ShardReader(Path(r.data.shard_dir) / "s1" / "code@256")
    assert code.meta["attention"] == "cross_document"
    assert any(len(code.doc_lens_of(i)) > 1 for i in range(len(code)))  # documents joined, not chunked
    mixture = StageMixture.open(r.data.shard_dir, r.stage("s1"), r.seed)
    assert mixture.attention_cost(0) == 256**2


@pytest.mark.parametrize("kind", ["long", pytest.param("sft", marks=pytest.mark.slow)])
def test_tokenization_same_for_any_worker_count(tmp_path, corpus, tokenizer_dir, kind) -> None:
    path = corpus / ("chat.jsonl" if kind == "sft" else "web.jsonl")
    outputs = []
    for workers in (1, 2):
        stream = DocumentStream([SourceSpec(type="jsonl", path=str(path))], kind)
        tokenize_documents(stream, tokenizer_dir, tmp_path / f"w{workers}", workers, show_progress=False)
        outputs.append({f.name: f.read_bytes() for f in sorted((tmp_path / f"w{workers}").iterdir())})
    assert outputs[0] == outputs[1]
    docs = TokenizedDocs(tmp_path / "w1")
    assert len(docs) == (100 if kind == "sft" else 300)
    docs.close()


def test_stats_and_peek(tmp_path, corpus, tokenizer_dir, capsys) -> None:
    from prolong.data.commands import peek, stats

    r = recipe(corpus, tmp_path, str(tokenizer_dir))
    for stage in r.stages:
        build_stage(r, stage, workers=1, show_progress=False)
    stats(r.data.shard_dir, plot=str(tmp_path / "lengths.png"))
    out = capsys.readouterr().out
    assert "s1/code@64" in out and ">32K" in out and (tmp_path / "lengths.png").stat().st_size > 1000
    peek(str(Path(r.data.shard_dir) / "sft" / "chat@256"), index=0)
    out = capsys.readouterr().out
    assert "┃doc 0 ·" in out and "<|assistant|>" in out


def test_trained_tokenizer_from_recipe_sources(tmp_path, corpus) -> None:
    from transformers import AutoTokenizer

    r = recipe(corpus, tmp_path, None, train_vocab_size=300)
    path = resolve_tokenizer(r, show_progress=False)
    assert path == str(Path(r.output_dir) / "tokenizer")
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 300 and tok.chat_template and tok.eos_token == "</s>"
    assert resolve_tokenizer(r, show_progress=False) == path  # reused


def test_train_tokenizer_command(tmp_path, corpus) -> None:
    from transformers import AutoTokenizer

    from prolong.data.commands import train_tokenizer

    train_tokenizer(str(tmp_path / "tok"), str(corpus / "*.jsonl"), vocab_size=400)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|assistant|>\n") and tok("json value")["input_ids"][0] == tok.bos_token_id


def test_local_corpus_is_deterministic_and_readable(tmp_path) -> None:
    from prolong.data.local_corpus import build_local_corpus

    first = build_local_corpus(tmp_path / "a", max_bytes=512 << 10)
    build_local_corpus(tmp_path / "b", max_bytes=512 << 10)
    for part in ("code/repos.jsonl", "prose/docs.jsonl", "short/short.jsonl", "sft/chat.jsonl"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part
    assert all(v["rows"] > 0 for v in first.values())
    code = DocumentStream(
        [
            SourceSpec(
                type="jsonl", path=str(tmp_path / "a/code/repos.jsonl"), group_field="repo", name_field="path"
            )
        ],
        "long",
    )
    assert len(list(code)) >= 1
    chats = list(DocumentStream([SourceSpec(type="jsonl", path=str(tmp_path / "a/sft/chat.jsonl"))], "sft"))
    assert chats and chats[0][-1]["role"] == "assistant"


def test_prompt_completion_rows_train_on_the_completion_only(tmp_path, corpus, tokenizer_dir, tokenizer) -> None:
    rng = random.Random(1)
    pairs = [{"q": words(rng, rng.randint(5, 40)) + " answer:", "a": " " + words(rng, rng.randint(1, 5))}
             for _ in range(60)]
    path = write_jsonl(tmp_path / "qa.jsonl", pairs)
    r = recipe(corpus, tmp_path, str(tokenizer_dir))
    source = SourceSpec(type="jsonl", path=path, prompt_field="q", completion_field="a")
    domain = r.data.domains[2].model_copy(update={"name": "qa", "sources": [source]})
    stage = r.stage("sft").model_copy(update={"mixture": [r.stage("sft").mixture[0].model_copy(update={"domain": "qa"})]})
    r = r.model_copy(update={"data": r.data.model_copy(update={"domains": [*r.data.domains, domain]}),
                             "stages": [r.stages[0], stage]})
    meta = build_stage(r, stage, workers=1, show_progress=False)[0]
    reader = ShardReader(Path(r.data.shard_dir) / "sft" / "qa@256")
    completions = sum(len(tokenizer(p["q"] + p["a"], add_special_tokens=False)["input_ids"])
                      - len(tokenizer(p["q"], add_special_tokens=False)["input_ids"]) + 1 for p in pairs)  # + EOS
    assert meta["has_loss_mask"] and meta["num_documents"] == 60
    assert sum(int(reader[i].loss_mask.sum()) for i in range(len(reader))) == completions
    answers = {p["a"] for p in pairs}
    for i in range(len(reader)):
        seq, start = reader[i], 0
        for length in reader.doc_lens_of(i):  # each document trains on its own completion, then EOS
            ids, mask = seq.input_ids[start : start + length], seq.loss_mask[start : start + length].astype(bool)
            assert ids[mask][-1] == tokenizer.eos_token_id
            assert tokenizer.decode(ids[mask][:-1].tolist()) in answers
            start += length


def test_prompt_completion_source_errors_name_the_row_and_field(tmp_path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "a prompt", "a": " ok"}, {"q": "no completion"}])
    stream = DocumentStream([SourceSpec(type="jsonl", path=path, prompt_field="q", completion_field="a")], "sft")
    with pytest.raises(UserError, match=r"qa.jsonl:2: no field 'a'; the row has fields \['q'\]"):
        list(stream)
    with pytest.raises(ValueError, match="prompt_field is for sft domains"):
        DomainSpec(name="qa", kind="short", sources=[SourceSpec(type="jsonl", path=path, prompt_field="q")])
