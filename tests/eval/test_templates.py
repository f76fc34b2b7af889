"""Rendered prompts match specs/eval-protocol.md character for character (fixed seeds).

The spec quotes HELMET's prompt_template (user template + "\n" + system template); protocol.py keeps the two
apart as HELMET does, so a chat model's user text carries no answer prefix. HELMET's own RULER templates
(its load_ruler; the spec quotes RULER's, with a leading-space prefix) are copied below from HELMET's data.py.
"""

from __future__ import annotations

import json
import re

import pytest

from prolong.errors import UserError
from prolong.eval import protocol as P
from prolong.eval.synthetic import NOISE, SynthConfig, build_synthetic
from prolong.eval.tasks import build_examples

# Copied from the spec by hand, independent of prolong.eval.protocol.
SPEC_JSON_KV = ("{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n"
                "{demos}Key: {question}\nCorresponding value:")
SPEC_NIAH = ("Some special magic {type} are hidden within the following text. Make sure to memorize it. I will quiz "
             "you about the {type} afterwards.\n{context}\nWhat are all the special magic {type} for {query} "
             "mentioned in the provided text?")
SPEC_NIAH_PREFIX = " The special magic {type} for {query} mentioned in the provided text are"
HELMET_NIAH_PREFIX = SPEC_NIAH_PREFIX.lstrip()  # HELMET data.py load_ruler: no leading space
SPEC_VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
           "Question: Find all variables that are assigned the value {query} in the text above.")
SPEC_VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                  "are assigned the value {query}, they are: ")
HELMET_VT_PREFIX = SPEC_VT_PREFIX.strip()
SPEC_RAG = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
            "following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}\nAnswer:")
SPEC_RERANK = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on "
               "their relevance to the question in descending order from most relelvant to least relevant texts. "
               "Include all documents in the rankings. Write your answer using the unique IDs, with the following "
               "format:\nRanking: ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}\nRanking:")
SPEC_ICL = ('Use the provided mapping from the text to label to assign a label to the text. Only output "label: '
            '{label}" and nothing else. \n\n{context}\n\n{question}\nlabel:')
SPEC_NQA = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the "
            "question as concisely as you can, using a single phrase if possible.\n\n{demo}{context}\n\nQuestion: "
            "{question}\nAnswer:")
SPEC_LEXSUM = ("You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the "
               "case. Write a concise summary of one paragraph (200 to 250 words). The summary should contain a "
               "short description of the background, the parties involved, and the outcomes of the case.\n\n"
               "{demo}Legal documents:\n{context}\n\nNow please summarize the case.\n\nSummary:")


def _cfg(tokenizer, max_new_tokens: int, chat: bool = False) -> SynthConfig:
    return SynthConfig(tokenizer, 2048, max_new_tokens, chat, seed=7)


def test_protocol_constants_equal_spec() -> None:
    assert P.JSON_KV_TEMPLATE + "\n" + P.JSON_KV_PREFIX == SPEC_JSON_KV
    assert P.RAG_TEMPLATE + "\n" + P.RAG_PREFIX == SPEC_RAG
    assert P.RERANK_TEMPLATE + "\n" + P.RERANK_PREFIX == SPEC_RERANK
    assert P.ICL_TEMPLATE + "\n" + P.ICL_PREFIX == SPEC_ICL
    assert P.NARRATIVEQA_TEMPLATE + "\n" + P.RAG_PREFIX == SPEC_NQA
    # Multi-LexSum's prompt_template joins with a blank line.
    assert P.MULTI_LEXSUM_TEMPLATE + P.LONG_SEPARATOR + P.SUMMARY_PREFIX == SPEC_LEXSUM
    assert P.NIAH_TEMPLATE == SPEC_NIAH and P.NIAH_PREFIX == HELMET_NIAH_PREFIX
    assert P.VT_TEMPLATE == "{example}" + SPEC_VT and P.VT_PREFIX == HELMET_VT_PREFIX


def test_json_kv_prompt(tokenizer) -> None:
    ex = build_synthetic("json_kv", _cfg(tokenizer, 100), 1)[0]
    pairs = re.findall(r'"([0-9a-f-]{36})": "([0-9a-f-]{36})"', ex.context)
    gold_key = next(k for k, v in pairs if v == ex.answers[0])
    demos = re.findall(r"Key: (\S+)\nCorresponding value: (\S+)\n\n", ex.template)
    assert len(demos) == 2 and all(d in pairs for d in demos) and gold_key not in dict(demos)
    demo_text = "".join(f"Key: {k}\nCorresponding value: {v}\n\n" for k, v in demos)
    expected = (SPEC_JSON_KV.replace("{context}", ex.context).replace("{demos}", demo_text)
                .replace("{question}", gold_key))
    assert ex.context.startswith('JSON data:\n{"') and '",\n "' in ex.context
    prompt = P.render(tokenizer, ex.user_text(), ex.answer_prefix, chat=False)
    assert prompt == expected  # base: user + "\n" + system
    assert ex.user_text() + "\nCorresponding value:" == expected  # chat: the user text alone


def test_niah_plural_and_singular(tokenizer) -> None:
    mv = build_synthetic("ruler_niah_mv", _cfg(tokenizer, 128), 1)[0]
    key = re.search(r"for (\S+) mentioned", mv.template).group(1)
    fields = {"{type}": "numbers", "{query}": key}
    expected = SPEC_NIAH
    for k, v in fields.items():
        expected = expected.replace(k, v)
    assert mv.user_text() == expected.replace("{context}", mv.context)
    assert mv.answer_prefix == HELMET_NIAH_PREFIX.replace("{type}", "numbers").replace("{query}", key)
    for value in mv.answers:
        assert f"One of the special magic numbers for {key} is: {value}." in mv.context
    single = build_synthetic("ruler_niah_s_1", _cfg(tokenizer, 128), 1)[0]
    key = re.search(r"for (\S+) mentioned", single.template).group(1)
    assert single.user_text() == (
        "A special magic number is hidden within the following text. Make sure to memorize it. I will quiz you "
        f"about the number afterwards.\n{single.context}\nWhat is the special magic number for {key} mentioned in "
        "the provided text?")
    assert single.answer_prefix == f"The special magic number for {key} mentioned in the provided text is"
    assert set(single.context.split("\n")) == {NOISE, (f"One of the special magic numbers for {key} is: "
                                               f"{single.answers[0]}.")}


def test_vt_prompt(tokenizer) -> None:
    ex = build_synthetic("ruler_vt", _cfg(tokenizer, 30), 1)[0]
    value = re.findall(r"VAR \w+ = (\d{5})", ex.context)[0]
    question = SPEC_VT.replace("{query}", value)
    worked, _, rest = ex.user_text().rpartition("\n\n" + question.split("{context}")[0])
    # The worked example is RULER's: its template, its prefix (spaces included), a space, the 5 names.
    assert worked.startswith(SPEC_VT.split("{context}")[0])
    assert re.search(r"they are:  [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3}$", worked)
    assert rest.endswith(question.split("{context}")[1])
    assert ex.answer_prefix == HELMET_VT_PREFIX.replace("{num_v}", "5").replace("{query}", value)
    assert ex.context.count("VAR ") == 9 and ex.answers[0] in ex.context
    assert re.search(r"\nVAR [A-Z]{5} = VAR [A-Z]{5} \n", ex.context)  # RULER's trailing space


def test_chat_rendering_uses_template(tokenizer) -> None:
    ex = build_synthetic("ruler_niah_s_1", _cfg(tokenizer, 128, chat=True), 1)[0]
    prompt = P.render(tokenizer, ex.user_text(), ex.answer_prefix, chat=True)
    assert prompt == f"<s><|user|>\n{ex.user_text()}<|end|>\n<|assistant|>\n"


def _write(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rag_rerank_icl_prompts(tmp_path, tokenizer) -> None:
    ctx = [{"title": f"T{i}", "text": f"passage {i}", "has_answer": i == 1} for i in range(30)]
    rows = [{"question": f"q{i}?", "answers": [f"a{i}"], "ctxs": ctx} for i in range(4)]
    _write(tmp_path / "kilt/nq-dev-multikilt_1000_k20_dep6.jsonl", rows)
    _write(tmp_path / "kilt/nq-train-multikilt_1000_k3_dep6.jsonl", rows)
    ex = build_examples("rag_nq", tokenizer, 4096, 1, seed=3, chat=False, data_dir=str(tmp_path))[0]
    context = "\n\n".join(f"Document (Title: T{i}): passage {i}" for i in range(20))
    demo = re.findall(r"Question: (q\d\?)\nAnswer: (a\d)\n\n", ex.template)
    assert len(demo) == 2
    # HELMET writes every passage of a demo row (the demo file holds 3 per question).
    demos = "".join("\n\n".join(f"Document (Title: T{i}): passage {i}" for i in range(30))
                    + f"\n\nQuestion: {q}\nAnswer: {a}\n\n" for q, a in demo)
    question = re.search(r"Question: (q\d\?)$", ex.template).group(1)
    assert ex.user_text() + "\nAnswer:" == (SPEC_RAG.replace("{demos}", demos).replace("{context}", context)
                                            .replace("{question}", question))

    rr = [{"qid": str(q), "query": f"query {q}", "ctxs": [{"id": str(i), "text": f"doc {i}", "label": i % 3}
                                                          for i in range(14)]} for q in range(3)]
    _write(tmp_path / "msmarco/test_reranking_data_k14_dep3.jsonl", rr)
    _write(tmp_path / "msmarco/test_reranking_data_k10_dep3.jsonl", rr)
    ex = build_examples("rerank_msmarco", tokenizer, 4096, 1, seed=3, chat=False, data_dir=str(tmp_path))[0]
    assert ex.context.startswith("[ID: 0] Document: doc 0\n\n[ID: 1] Document: doc 1")
    assert ex.user_text().startswith(SPEC_RERANK.split("{demos}")[0]) and ex.meta["qrels"]["2"] == 2

    train = [{"text": f"sentence {i}", "label": i % 4} for i in range(40)]
    _write(tmp_path / "icl/trec_coarse_train.jsonl", train)
    _write(tmp_path / "icl/trec_coarse_test.jsonl", train[:3])
    ex = build_examples("icl_trec_coarse", tokenizer, 4096, 1, seed=3, chat=False, data_dir=str(tmp_path))[0]
    demos = ex.context.split("\n\n")
    # HELMET's abstract labels range over all 6 TREC coarse classes.
    # HELMET's balance_labels fills the 200 shots of 4K, repeating rows when the train set is smaller.
    assert len(demos) == 200 and all(re.fullmatch(r"sentence \d+\nlabel: [0-5]", d) for d in demos)
    assert ex.user_text() + "\nlabel:" == SPEC_ICL.replace("{context}", ex.context).replace(
        "{question}", ex.template.split("\n\n")[-1])
    # the mapping is consistent: every demo with the same original label has the same abstract label
    by_label: dict[str, set[str]] = {}
    for d in demos:
        i = int(d.split()[1])
        by_label.setdefault(train[i]["label"], set()).add(d[-1])
    assert all(len(v) == 1 for v in by_label.values()) and len(set().union(*by_label.values())) == 4


def test_missing_file_names_path_and_format(tmp_path, tokenizer) -> None:
    with pytest.raises(UserError, match=r"kilt/nq-dev-multikilt_1000_k50_dep6\.jsonl.*\"question\"") as error:
        build_examples("rag_nq", tokenizer, 8192, 1, seed=0, chat=False, data_dir=str(tmp_path))
    assert "ctxs" in str(error.value)
    with pytest.raises(UserError, match="narrativeqa/test.jsonl"):
        build_examples("narrativeqa", tokenizer, 8192, 1, seed=0, chat=False, data_dir=str(tmp_path))


def test_long_document_truncation_cuts_context_only(tmp_path, tokenizer) -> None:
    _write(tmp_path / "narrativeqa/test.jsonl",
           [{"context": " ".join(f"word{i}" for i in range(3000)), "question": "Who?", "answers": ["me"]}])
    ex = build_examples("narrativeqa", tokenizer, 1024, 1, seed=0, chat=False, data_dir=str(tmp_path))[0]
    # HELMET cuts the document to 1024 - 200 - 100 tokens with the suffix ahead of time ...
    # (HELMET's cut keeps 724 tokens including the suffix's; merges at the join may add one or two.)
    assert ex.context.endswith(P.TRUNCATION_SUFFIX) and len(tokenizer(ex.context)["input_ids"]) <= 726
    # ... and the prompt again (without a suffix) only if it still exceeds 1024 - 100.
    ids, cut = P.truncate_context(tokenizer, ex, False, 1024 - 100)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert not cut and len(ids) <= 924 and text.startswith(SPEC_NQA.split("{demo}")[0])
    assert "word0 word1" in text and P.TRUNCATION_SUFFIX + "\n\nQuestion: Who?\nAnswer:" in text
    ids, cut = P.truncate_context(tokenizer, ex, False, 500)
    assert cut and len(ids) <= 500
    assert tokenizer.decode(ids, skip_special_tokens=True).endswith("\n\nQuestion: Who?\nAnswer:")
