"""`prolong eval ...`: typed command functions; each docstring is the command's --help."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from prolong.config import RECIPES_DIR, EvalSpec, Recipe, RecipeError, load_recipe, with_overrides
from prolong.errors import UserError
from prolong.publish import write_json


def eval(
    recipe_or_model: str,
    stage: str | None = None,
    model: str | None = None,
    out_dir: str | None = None,
    tasks: str | None = None,
    lengths: str | None = None,
    num_examples: int | None = None,
    seed: int | None = None,
    data_dir: str | None = None,
    essay_path: str | None = None,
    depths: str | None = None,
    chat: bool | None = None,
    engine: str | None = None,
    dtype: str | None = None,
    prefill_chunk: int | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key_env: str | None = None,
    short: bool = False,
    short_tasks: str | None = None,
    short_limit: int | None = None,
    tasks_dir: str | None = None,
    trust_remote_code: bool | None = None,
) -> None:
    """Long-context evaluation (HELMET/RULER protocol) of a recipe's model or of a local HF checkpoint.

    RECIPE_OR_MODEL: a recipe (file or shipped name) -> its `eval:` block and the export of its last
    finished stage (--stage NAME: that stage's export; --model DIR: another checkpoint); or a model
    directory -> the eval defaults below. Each flag overrides one field of those settings:
    --tasks and --short-tasks take comma lists; --lengths takes token counts (4096,8K,32K);
    --depths takes needle depths (0.1,0.5,0.9). Synthetic tasks are generated with the model's
    tokenizer; the others read HELMET files from --data-dir (a missing file is named with its format).
    Outputs in --out-dir (default MODEL/eval): TASK_LENGTH.json, summary.md/.csv, plots and
    eval_spec.yaml (the settings used, engine resolved). Finished (task, length) files are skipped.
    --short: instead run lm-eval on the short tasks (local files: --data-dir/<task>/<split>.jsonl, or
    your own YAMLs in --tasks-dir); needs the eval extra. Results in short.json, settings in
    short_spec.yaml. --trust-remote-code: default the recipe's model.trust_remote_code, else off.
    """
    from prolong.eval.runner import save_spec

    console = Console()
    model_dir, base, origin, trust = _target(recipe_or_model, stage, model)
    given = {"tasks": _comma_list(tasks), "lengths": _comma_list(lengths), "num_examples": num_examples,
             "seed": seed, "data_dir": data_dir, "essay_path": essay_path, "depths": _comma_list(depths),
             "chat": chat, "engine": engine, "dtype": dtype, "prefill_chunk": prefill_chunk,
             "judge_url": judge_url, "judge_model": judge_model, "judge_api_key_env": judge_api_key_env,
             "short_tasks": _comma_list(short_tasks), "short_limit": short_limit, "short_tasks_dir": tasks_dir}
    overrides = {field: value for field, value in given.items() if value is not None}
    spec = with_overrides(base, overrides, f"eval settings ({origin}, with the flags given)")
    trust = trust if trust_remote_code is None else trust_remote_code
    out = Path(out_dir) if out_dir is not None else model_dir / "eval"
    console.print(f"evaluating {model_dir} ({origin})", highlight=False)
    if short:
        from prolong.eval.short import run_short

        results = run_short(str(model_dir), spec, trust_remote_code=trust)
        write_json(out / "short.json", results, indent=1)
        save_spec(spec, out / SHORT_SPEC_FILE, str(model_dir))
        for task, metrics in results.items():
            console.print(task, {k: round(v, 4) for k, v in metrics.items()}, highlight=False)
        return
    from prolong.eval.runner import run_eval

    run_eval(model_dir, spec, out, trust_remote_code=trust)
    console.print((out / "summary.md").read_text(), highlight=False)
    console.print(f"results in {out}")


SHORT_SPEC_FILE = "short_spec.yaml"


def _comma_list(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _target(recipe_or_model: str, stage: str | None, model: str | None) -> tuple[Path, EvalSpec, str, bool]:
    """(model directory, eval settings, where they come from, trust_remote_code) of RECIPE_OR_MODEL."""
    path = Path(recipe_or_model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a directory but not a model directory (no config.json)")
        if stage is not None or model is not None:
            raise UserError("--stage and --model choose a recipe's model; the argument is already a model directory")
        return path, EvalSpec(), "model directory, eval defaults", False
    try:
        recipe = load_recipe(recipe_or_model)
    except RecipeError:
        if path.exists():
            raise  # a recipe file with problems: its own message names them
        shipped = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise UserError(f"{recipe_or_model}: not a model directory, a recipe file or a shipped recipe "
                        f"(shipped: {', '.join(shipped)})") from None
    trust = recipe.model.trust_remote_code
    origin = f"recipe {recipe.name!r}"
    if model is not None:
        if stage is not None:
            raise UserError("give --stage or --model, not both")
        return Path(model), recipe.eval, f"{origin}, --model", trust
    return _stage_export(recipe, stage), recipe.eval, origin, trust


def _stage_export(recipe: Recipe, stage: str | None) -> Path:
    """The export of the named stage, else of the recipe's last finished stage."""
    from prolong.train.stages import export_dir, is_finished

    if stage is not None:
        chosen = recipe.stage(stage)
        if not is_finished(recipe, chosen):
            raise UserError(f"stage {chosen.name!r} of recipe {recipe.name!r} has no export yet "
                            f"({export_dir(recipe, chosen)}); train it first, or pass --model DIR")
        return export_dir(recipe, chosen)
    finished = [s for s in recipe.stages if is_finished(recipe, s)]
    if not finished:
        raise UserError(f"no stage of recipe {recipe.name!r} is finished yet (no export under "
                        f"{recipe.output_dir}); train it first, or pass --model DIR")
    return export_dir(recipe, finished[-1])


def perplexity(model_dir: str, docs: str, seq_len: int = 65536, last_n: int = 32768, num_buckets: int = 8,
               max_docs: int = 10, out: str | None = None, dtype: str = "auto") -> None:
    """Loss and perplexity by position on the last LAST_N tokens of SEQ_LEN-token documents.

    --docs: a .txt/.jsonl ('text' field) file or directory of long documents. A secondary signal only:
    judge long-context ability by the downstream tasks of `prolong eval`.
    """
    from prolong.eval.engine import load_for_generation
    from prolong.eval.perplexity import perplexity_by_position, read_texts

    model, tokenizer = load_for_generation(model_dir, dtype)
    result = perplexity_by_position(model, tokenizer, read_texts(docs), seq_len, last_n, num_buckets, max_docs)
    text = json.dumps(result, indent=1)
    if out:
        Path(out).write_text(text)
    print(text)
