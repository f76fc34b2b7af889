"""`--short`: lm-eval tasks read local JSONL through generated YAMLs."""

from __future__ import annotations

import json

import pytest

from prolong.config import EvalSpec
from prolong.errors import UserError
from prolong.eval.short import local_task_yamls, run_short


def _hellaswag_rows(n: int) -> list[dict]:
    return [{"ind": i, "activity_label": "Cooking", "ctx_a": "A man cuts onions.", "ctx_b": "he",
             "ctx": "A man cuts onions. he", "endings": ["cries.", "flies.", "sings.", "swims."],
             "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"} for i in range(n)]


def test_local_yaml_and_missing_files(tmp_path) -> None:
    data = tmp_path / "data"
    (data / "hellaswag").mkdir(parents=True)
    (data / "hellaswag" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _hellaswag_rows(2)))
    names = local_task_yamls(data, ["hellaswag"], tmp_path)
    config = json.loads((tmp_path / "hellaswag_local.yaml").read_text())
    assert names == ["hellaswag_local"] and config["dataset_path"] == "json"
    assert config["include"].endswith("hellaswag/hellaswag.yaml")
    with pytest.raises(UserError, match=r"gsm8k/<split>\.jsonl"):
        local_task_yamls(data, ["gsm8k"], tmp_path)
    with pytest.raises(UserError, match="tasks_dir"):
        local_task_yamls(data, ["mmlu"], tmp_path)


@pytest.mark.slow
def test_simple_evaluate_on_local_hellaswag(model_dir, tmp_path) -> None:
    data = tmp_path / "data"
    (data / "hellaswag").mkdir(parents=True)
    (data / "hellaswag" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _hellaswag_rows(4)))
    spec = EvalSpec(short_tasks=["hellaswag"], data_dir=str(data), short_limit=4)
    results = run_short(str(model_dir), spec, batch_size=2, device="cpu")
    assert 0.0 <= results["hellaswag_local"]["acc,none"] <= 1.0
