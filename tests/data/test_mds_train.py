"""ProLong-style MDS data through the normal pipeline: `prolong data build` links the packs (document
boundaries from `indices`, SFT masks from `mask`) and re-packs unpacked documents, `prolong train`
trains on them, and the losses equal those of the same sequences stored as prolong shards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prolong.config import RecipeError, recipe_from_dict
from prolong.data.build import build_stage
from prolong.data.commands import stats
from prolong.data.format import ShardWriter, is_complete, open_shard, shard_meta
from prolong.data.mds import MdsError, MdsPacks
from prolong.data.mixture import StageMixture, TokenizerMismatchError, shard_path
from prolong.errors import UserError
from prolong.model.io import load_tokenizer
from prolong.train.metrics import read_metrics

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mds"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def prolong(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "prolong", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600, check=False)
    if check and result.returncode:
        pytest.fail(f"prolong {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def mds_recipe(root: Path, tokenizer_dir: Path, data: Path) -> dict:
    """Packed books (procNN folders), code (merged index), web (zstd), chat (SFT masks) and unpacked
    documents re-mixed with packs, in 32-token stages of a tiny Llama."""

    def source(name: str) -> list[dict]:
        return [{"type": "mds", "path": str(data / name)}]

    return {
        "name": "tiny-mds",
        "seed": 3,
        "output_dir": str(root / "run"),
        "model": {
            "init": {
                "architecture": "llama",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 64,
            },
            "dtype": "float32",
        },
        "tokenizer": {"path": str(tokenizer_dir)},
        "data": {
            "shard_dir": str(root / "data"),
            "num_workers": 1,
            "domains": [
                {"name": "books", "kind": "long", "sources": source("packed/books")},
                {"name": "code", "kind": "long", "sources": source("packed/code")},
                {"name": "web", "kind": "short", "sources": source("packed/web")},
                {"name": "chat", "kind": "sft", "sources": source("sft/chat")},
                {"name": "raw_books", "kind": "long", "sources": source("raw/books")},
                {"name": "raw_web", "kind": "short", "sources": source("raw/web")},
            ],
        },
        "stages": [
            {
                "name": "s1",
                "seq_len": 32,
                "tokens_per_step": 64,
                "steps": 3,
                "lr": 2e-3,
                "min_lr": 2e-4,
                "mixture": [
                    {"domain": "books", "proportion": 0.4},
                    {"domain": "code", "proportion": 0.3},
                    {"domain": "web", "proportion": 0.3},
                ],
            },
            {
                "name": "sft",
                "kind": "sft",
                "seq_len": 32,
                "tokens_per_step": 64,
                "steps": 2,
                "lr": 1e-3,
                "min_lr": 1e-4,
                "mixture": [{"domain": "chat", "proportion": 1.0}],
            },
            {
                "name": "remix",
                "init_from": "s1",
                "seq_len": 32,
                "tokens_per_step": 64,
                "steps": 2,
                "lr": 1e-3,
                "min_lr": 1e-4,
                "mixture": [
                    {"domain": "raw_books", "proportion": 0.4, "doc_len": 16},
                    {"domain": "raw_web", "proportion": 0.3},
                    {"domain": "books", "proportion": 0.3},
                ],
            },
        ],
        "training": {"checkpoint_every": 100, "attention_backend": "sdpa_per_doc"},
    }


def write(recipe: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def losses(stage_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(stage_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the fixtures (zstd shards are decompressed next to themselves)."""
    return Path(shutil.copytree(FIXTURES, tmp_path_factory.mktemp("mds") / "mds"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, data: Path) -> dict:
    root = tmp_path_factory.mktemp("mds-run")
    recipe = mds_recipe(root, tokenizer_dir, data)
    path = write(recipe, root / "recipe.yaml")
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):  # `prolong data build`, in this process (faster)
        spec = recipe_from_dict(recipe)
        for stage in spec.stages:
            build_stage(spec, stage)
    prolong("train", str(path))
    return {"root": root, "recipe": recipe, "path": path, "build": printed.getvalue()}


def test_build_links_packs_and_repacks_documents(trained: dict) -> None:
    shards = trained["root"] / "data"
    for stage, domain in [("s1", "books"), ("s1", "code"), ("s1", "web"), ("sft", "chat"), ("remix", "books")]:
        link = shard_path(shards, stage, domain, 32)
        assert sorted(p.name for p in link.iterdir()) == ["meta.json"]  # no token copied
        meta = shard_meta(link)
        assert meta["format"] == "mds" and meta["seq_len"] == 32 and meta["has_loss_mask"] == (domain == "chat")
        assert meta["num_tokens"] == 32 * meta["num_sequences"] and meta["max_token_id"] < 256
    reader = open_shard(shard_path(shards, "s1", "books", 32))
    assert isinstance(reader, MdsPacks) and len(reader) == 6
    for domain, doc_len in [("raw_books", 16), ("raw_web", 32)]:  # re-packed into prolong shards
        assert (shard_path(shards, "remix", domain, doc_len) / "tokens.bin").is_file()
    assert "used as they are" in trained["build"]


def test_training_runs_every_stage_on_mds_data(trained: dict) -> None:
    run = trained["root"] / "run"
    for stage, steps in [("s1", 3), ("sft", 2), ("remix", 2)]:
        values = losses(run / stage)
        assert len(values) == steps and all(np.isfinite(values))
        assert (run / stage / "export" / "config.json").is_file()



def test_a_second_build_finds_everything_up_to_date(trained: dict, capsys: pytest.CaptureFixture) -> None:
    recipe = recipe_from_dict(trained["recipe"])
    for stage in recipe.stages:
        build_stage(recipe, stage)
    printed = capsys.readouterr().err
    assert "linked" not in printed and "wrote" not in printed and printed.count("done") == 7


def copy_as_prolong_shards(trained: dict, out: Path, stages: tuple[str, ...]) -> dict:
    """The same sequences (tokens, document lengths, loss masks) written as prolong shards under `out`;
    returns the recipe reading them."""
    recipe = json.loads(json.dumps(trained["recipe"]))
    recipe["output_dir"] = str(out / "run")
    recipe["data"]["shard_dir"] = str(out / "data")
    for stage in stages:
        for entry in next(s for s in recipe["stages"] if s["name"] == stage)["mixture"]:
            packs = open_shard(shard_path(trained["root"] / "data", stage, entry["domain"], 32))
            writer = ShardWriter(shard_path(out / "data", stage, entry["domain"], 32), packs.use_mask)
            for i in range(len(packs)):
                sequence = packs[i]
                writer.add(sequence.input_ids, sequence.doc_lens, sequence.loss_mask)
            kept = ("tokenizer", "tokenizer_path", "stage", "domain", "kind", "attention", "seq_len", "doc_len")
            writer.close({k: packs.meta[k] for k in kept})
    return recipe


def test_the_mixture_of_packs_is_the_mixture_of_the_same_sequences_in_shards(
    trained: dict, tokenizer_dir: Path, tmp_path: Path
) -> None:
    """Same samples for every global index (so resume by index is unchanged), same step shares."""
    recipe = recipe_from_dict(copy_as_prolong_shards(trained, tmp_path, ("s1", "sft")))
    tokenizer = load_tokenizer(tokenizer_dir)
    for stage in recipe.stages[:2]:
        packs = StageMixture.open(trained["root"] / "data", stage, 3, tokenizer)
        shards = StageMixture.open(tmp_path / "data", stage, 3, tokenizer)
        assert isinstance(packs.components[0].reader, MdsPacks)
        assert np.allclose(packs.sample_probs, shards.sample_probs)
        for g in range(200):
            a, b = packs[g], shards[g]
            assert a.input_ids.tolist() == b.input_ids.tolist() and a.doc_lens.tolist() == b.doc_lens.tolist()
            assert (a.loss_mask is None) == (b.loss_mask is None)
            assert a.loss_mask is None or a.loss_mask.tolist() == b.loss_mask.tolist()
        indices = packs.indices_for_step(5, 4)
        assert packs.rank_share(indices, 1, 2) == shards.rank_share(indices, 1, 2)
    chat = StageMixture.open(trained["root"] / "data", recipe.stages[1], 3, tokenizer)
    assert any(not chat[g].loss_mask.all() for g in range(8))  # the SFT mask reaches the sequences


@pytest.mark.slow
def test_packs_train_exactly_like_the_same_sequences_in_prolong_shards(trained: dict, tmp_path: Path) -> None:
    """Document masks from `indices` and SFT masks from `mask` are what the loop trains on."""
    recipe = copy_as_prolong_shards(trained, tmp_path, ("s1", "sft"))
    path = write(recipe, tmp_path / "recipe.yaml")
    prolong("train", str(path), "--stage", "s1")
    prolong("train", str(path), "--stage", "sft")
    for stage in ("s1", "sft"):
        assert losses(tmp_path / "run" / stage) == losses(trained["root"] / "run" / stage)


def test_stats_reads_downloaded_mds_and_checks_the_vocabulary(
    trained: dict, data: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    stats(str(data / "packed"), tokenizer=str(tokenizer_dir))
    printed = capsys.readouterr().out
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in printed.splitlines()]
    rows = {row[0]: row[2:] for row in cells if row[1:2] == ["packed"]}
    # samples, tokens, documents, sample length, largest id: books (procNN parts), code, web (zstd)
    assert rows == {
        "books": ["6", "192", "8", "32", "255 (vocabulary 512)"],
        "code": ["4", "128", "12", "32", "255 (vocabulary 512)"],
        "web": ["4", "128", "12", "32", "255 (vocabulary 512)"],
    }
    assert ">32K" in printed
    stats(str(data / "raw"))
    assert "not checked: MDS data carries no tokenizer" in capsys.readouterr().out
    with pytest.raises(MdsError, match=r"oov/shard\.00000\.mds: sample 0: token id 1000000 does not fit .* 512"):
        stats(str(data / "misc" / "oov"), tokenizer=str(tokenizer_dir))
    stats(str(trained["root"] / "data" / "s1"), tokenizer=str(tokenizer_dir))
    assert "mds packs long/document" in capsys.readouterr().out


def _one_stage(recipe: dict, **changes) -> dict:
    recipe = json.loads(json.dumps(recipe))
    recipe["stages"] = [{**recipe["stages"][0], **changes}]
    return recipe


def test_a_stage_length_that_is_not_the_pack_length_is_an_error_naming_the_file(
    trained: dict, tmp_path: Path
) -> None:
    recipe = _one_stage(trained["recipe"], seq_len=64, tokens_per_step=128)
    recipe["data"]["shard_dir"] = str(tmp_path)
    spec = recipe_from_dict(recipe)
    with pytest.raises(MdsError, match=r"books/proc00-64/shard\.00000\.mds: sample 0: a pack of 32 tokens.*seq_len is 64"):
        build_stage(spec, spec.stages[0], show_progress=False)


def test_ids_outside_the_vocabulary_are_refused_by_the_build(trained: dict, data: Path, tmp_path: Path) -> None:
    recipe = _one_stage(trained["recipe"], mixture=[{"domain": "oov", "proportion": 1.0}])
    recipe["data"]["shard_dir"] = str(tmp_path)
    recipe["data"]["domains"].append({"name": "oov", "kind": "long", "sources": [{"type": "mds", "path": str(data / "misc" / "oov")}]})
    spec = recipe_from_dict(recipe)
    with pytest.raises(MdsError, match="token id 1000000 does not fit the vocabulary of 512"):
        build_stage(spec, spec.stages[0], show_progress=False)
    assert not is_complete(shard_path(tmp_path, "s1", "oov", 32))


def test_training_start_checks_the_recorded_ids_and_refuses_changed_data(
    trained: dict, tokenizer_dir: Path, tmp_path: Path
) -> None:
    shards = Path(shutil.copytree(trained["root"] / "data" / "s1", tmp_path / "s1"))
    stage = recipe_from_dict(trained["recipe"]).stages[0]
    tokenizer = load_tokenizer(tokenizer_dir)
    mixture = StageMixture.open(tmp_path, stage, 3, tokenizer)
    assert all(c.reader.vocab_size == len(tokenizer) for c in mixture.components)
    link = shards / "books@32" / "meta.json"
    meta = json.loads(link.read_text())
    link.write_text(json.dumps({**meta, "max_token_id": 100_000}))
    with pytest.raises(MdsError, match="token id 100000 does not fit the vocabulary"):
        StageMixture.open(tmp_path, stage, 3, tokenizer)
    link.write_text(json.dumps({**meta, "tokenizer": {"name": "other", "vocab_hash": "0"}}))
    with pytest.raises(TokenizerMismatchError):
        StageMixture.open(tmp_path, stage, 3, tokenizer)
    link.write_text(json.dumps({**meta, "mds_fingerprint": meta["mds_fingerprint"][1:]}))
    with pytest.raises(MdsError, match="changed since `prolong data build`"):
        StageMixture.open(tmp_path, stage, 3, tokenizer)


def test_recipes_with_mds_sources_must_name_their_tokenizer(trained: dict) -> None:
    recipe = json.loads(json.dumps(trained["recipe"]))
    recipe["tokenizer"] = {"train_vocab_size": 300}
    with pytest.raises(RecipeError, match=r"read MDS token ids, which carry no tokenizer: set tokenizer.path"):
        recipe_from_dict(recipe)
    recipe = json.loads(json.dumps(trained["recipe"]))
    recipe["data"]["domains"][0]["sources"].append({"type": "jsonl", "path": "x.jsonl"})
    with pytest.raises(RecipeError, match="mixes mds sources"):
        recipe_from_dict(recipe)


def test_doc_len_on_packs_is_refused(trained: dict, tmp_path: Path) -> None:
    recipe = _one_stage(trained["recipe"], mixture=[{"domain": "books", "proportion": 1.0, "doc_len": 16}])
    recipe["data"]["shard_dir"] = str(tmp_path)
    spec = recipe_from_dict(recipe)
    with pytest.raises(UserError, match="MDS packs are used as they are"):
        build_stage(spec, spec.stages[0], show_progress=False)
