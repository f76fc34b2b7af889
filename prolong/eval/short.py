"""Short-context checks through lm-evaluation-harness (optional extra `prolong[eval]`).

HellaSwag, MMLU, ARC-Challenge, WinoGrande and GSM8K. With `data_dir`, single-config tasks read local
JSONL files (DATA_DIR/<task>/<split>.jsonl) through generated task YAMLs that include lm-eval's own config
and override `dataset_path: json`, so nothing is downloaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from prolong.config import EvalSpec
from prolong.errors import UserError

# lm-eval config file of each task that local files can replace (MMLU is a group of 57 configs).
_BUILTIN_YAML = {
    "hellaswag": "hellaswag/hellaswag.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "winogrande": "winogrande/default.yaml",
    "gsm8k": "gsm8k/gsm8k.yaml",
}


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as error:
        raise UserError("`prolong eval --short` needs lm-eval: pip install 'prolong[eval]'") from error
    return lm_eval


def local_task_yamls(data_dir: Path, tasks: list[str], yaml_dir: Path) -> list[str]:
    """Write `<task>_local` YAMLs reading DATA_DIR/<task>/{train,validation,test}.jsonl; their task names."""
    lm_eval = _lm_eval()
    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    names = []
    for task in tasks:
        if task not in _BUILTIN_YAML:
            raise UserError(f"local files for {task} need your own task YAMLs: give short_tasks_dir (--tasks-dir) "
                            f"(lm-eval YAMLs with dataset_path: json); local files work for {sorted(_BUILTIN_YAML)}")
        files = {split: str(data_dir / task / f"{split}.jsonl") for split in ("train", "validation", "test")
                 if (data_dir / task / f"{split}.jsonl").exists()}
        if not files:
            raise UserError(f"missing data files for {task}: expected {data_dir / task}/<split>.jsonl "
                            "(split = train, validation or test; rows in the Hub dataset's columns)")
        config = {"include": str(tasks_root / _BUILTIN_YAML[task]), "task": f"{task}_local",
                  "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": files}}
        # The built-in configs name Hub splits; a split without a local file must not be asked for.
        for key, split in (("training_split", "train"), ("validation_split", "validation"), ("test_split", "test")):
            if split not in files:
                config[key] = None
        # JSON is valid YAML; lm-eval parses these with its YAML loader.
        (yaml_dir / f"{task}_local.yaml").write_text(json.dumps(config, indent=1))
        names.append(f"{task}_local")
    return names


def run_short(model: Any, spec: EvalSpec, tokenizer: Any = None, batch_size: int = 8, num_fewshot: int | None = None,
              device: str | None = None, trust_remote_code: bool = False) -> dict[str, dict[str, float]]:
    """lm_eval.simple_evaluate of spec.short_tasks on a model path or an in-memory HF model.

    Reads spec.data_dir (local files), spec.short_tasks_dir (your own YAMLs), spec.short_limit and
    spec.dtype (for a model path). Returns {task: {metric: value}}.
    """
    lm_eval = _lm_eval()
    import importlib.util

    from lm_eval.tasks import TaskManager

    if importlib.util.find_spec("accelerate") is None:  # lm-eval's HF backend imports it at load time
        raise UserError("lm-eval's Hugging Face backend needs `accelerate`: pip install accelerate")
    tasks, data_dir, tasks_dir = [t for t in spec.short_tasks if t.strip()], spec.data_dir, spec.short_tasks_dir
    with tempfile.TemporaryDirectory() as tmp:
        include = [tasks_dir] if tasks_dir else []
        names = tasks
        if data_dir:
            names = local_task_yamls(Path(data_dir), tasks, Path(tmp))
            include.append(tmp)
        manager = TaskManager(include_path=include or None)
        if isinstance(model, str):
            lm = "hf"
            model_args = {"pretrained": model, "dtype": spec.dtype, "trust_remote_code": trust_remote_code}
        else:
            from lm_eval.models.huggingface import HFLM

            lm, model_args = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), None
        results = lm_eval.simple_evaluate(model=lm, model_args=model_args, tasks=names, task_manager=manager,
                                          limit=spec.short_limit, batch_size=batch_size, num_fewshot=num_fewshot,
                                          device=device, log_samples=False)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in (results or {}).get("results", {}).items()}
