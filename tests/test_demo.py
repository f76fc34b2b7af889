"""The demo pipeline end to end at toy size: corpus, tokenizer, data, four stages, eval, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prolong.config import load_recipe
from prolong.demo import TRAINING_MINUTES, check_corpus_files, scale_recipe, shipped_training_minutes
from prolong.errors import UserError
from prolong.model.loss import resolve_cpu_compute_dtype


def test_demo_pipeline_writes_a_report(tmp_path: Path):
    out = tmp_path / "smoke"
    command = [sys.executable, "-m", "prolong", "demo", "--recipe", "tiny-smoke", "--out-dir", str(out),
               "--corpus-mb", "3"]
    started = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'}"

    recipe = load_recipe("tiny-smoke")
    report = (out / "report.md").read_text()
    for picture in ("training.png", "eval.png", "perplexity.png"):
        assert f"]({picture})" in report and (out / picture).stat().st_size > 10_000
    for stage in recipe.stages:
        assert (out / stage.name / "export" / "model.safetensors").exists()
        steps = [json.loads(line)["step"] for line in (out / stage.name / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in line]
        assert steps == list(range(1, stage.num_steps + 1)), stage.name
        assert f"| {stage.name} | {stage.kind} |" in report
    for label in ("before (base-128)", "after (sft)"):
        assert f"| ruler_niah_s_1 | {label} |" in report
    assert (out / "eval" / "sft" / "ruler_niah_s_1_2048.json").exists()
    assert "| positions | base-128 | stage1-512 | stage2-1k |" in report
    # the report says which dtype CPU training computed in, as each stage recorded it
    trained_in = {load_recipe(out / s.name / "recipe.yaml").training.cpu_compute_dtype for s in recipe.stages}
    assert trained_in == {resolve_cpu_compute_dtype(recipe.training.cpu_compute_dtype)}
    assert f"Training on a CPU computes in {trained_in.pop()} (`training.cpu_compute_dtype`" in report
    assert elapsed < 120, f"the toy demo took {elapsed:.0f}s"  # issue 8: the fast pipeline runs in < 2 minutes

    # a second run finds everything done and only rewrites the report
    again = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished, skipping" in again.stdout


def test_a_corpus_from_an_older_recipe_is_refused_with_the_missing_file(tmp_path: Path):
    recipe = load_recipe("tiny-demo", output_dir=str(tmp_path))
    corpus = tmp_path / "corpus"
    for domain in recipe.data.domains:
        for source in domain.sources:
            Path(source.path).parent.mkdir(parents=True, exist_ok=True)
            Path(source.path).write_text("{}\n")
    check_corpus_files(recipe, corpus)  # every file present: accepted

    (corpus / "retrieval" / "passkey.jsonl").unlink()
    with pytest.raises(UserError, match=r"lacks passkey.jsonl, which domain 'passkey' reads.*--fresh"):
        check_corpus_files(recipe, corpus)


def test_minutes_scale_the_steps_by_this_cpus_measured_training_time():
    recipe = load_recipe("tiny-demo")
    for dtype in ("float32", "bfloat16"):
        pinned = recipe.model_copy(update={"training": recipe.training.model_copy(update={"cpu_compute_dtype": dtype})})
        assert shipped_training_minutes(pinned) == TRAINING_MINUTES[dtype]
    assert TRAINING_MINUTES["float32"] > TRAINING_MINUTES["bfloat16"]
    half = scale_recipe(recipe, 0.5)
    assert [s.num_steps for s in half.stages] == [max(1, round(s.num_steps / 2)) for s in recipe.stages]
