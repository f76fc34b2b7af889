"""`prolong recipe ...` and `prolong info`: look at recipes and at the machine, without training."""

from __future__ import annotations

import json
import platform

import yaml
from rich.console import Console

from prolong.config import (
    RECIPES_DIR,
    Recipe,
    derived_numbers,
    format_count,
    load_recipe,
    resolve_recipe_path,
)


def validate(files: list[str], check_paths: bool = True) -> int:
    """Check recipe files (paths or shipped names); exit status 2 if any is invalid.

    Every problem is reported with its key path, the bad value and what is allowed. The local
    directories the recipe loads from must exist and hold what they should: model.path and
    synth.generator a checkpoint (config.json, safetensors), tokenizer.path (default: model.path) a
    tokenizer. --no-check-paths checks the schema only, e.g. for the shipped recipes, templates whose
    paths point at copies you make.
    """
    console = Console()
    failed = 0
    for name in files:
        try:
            recipe = load_recipe(name)
        except ValueError as error:
            failed += 1
            console.print(f"[red]invalid[/red] {error}", highlight=False)
            continue
        problems = path_problems(recipe) if check_paths else []
        if problems:
            failed += 1
            for problem in problems:
                console.print(f"[red]invalid[/red] {resolve_recipe_path(name)}: {problem}", highlight=False)
        else:
            console.print(f"[green]ok[/green] {resolve_recipe_path(name)} ({recipe.name}, "
                          f"{len(recipe.stages)} stage(s))", highlight=False)
    return 2 if failed else 0


def path_problems(recipe: Recipe) -> list[str]:
    """What is wrong with the local model and tokenizer directories a recipe names ([] when nothing)."""
    from prolong.hf_dirs import model_dir_problem, tokenizer_dir_problem

    checks = []
    if recipe.model.path is not None:
        checks.append(("model.path", model_dir_problem(recipe.model.path)))
    if recipe.tokenizer.path is not None:
        checks.append(("tokenizer.path", tokenizer_dir_problem(recipe.tokenizer.path)))
    elif recipe.tokenizer.train_vocab_size is None and recipe.model.path and not model_dir_problem(recipe.model.path):
        checks.append(("tokenizer (model.path)", tokenizer_dir_problem(recipe.model.path)))
    if recipe.synth is not None and recipe.synth.generator is not None:
        checks.append(("synth.generator", model_dir_problem(recipe.synth.generator)))
    return [f"{key}: {problem}" for key, problem in checks if problem]


def show(file: str, world_size: int = 8, stage: str | None = None, schema: bool = False) -> None:
    """Print the resolved recipe (defaults filled in) and the numbers derived from it.

    --world-size is the number of processes (GPUs) the run will use; it decides the data-parallel
    size and the gradient accumulation of each stage. --stage NAME (or a comma list) limits the
    derived numbers to those stages. --schema prints every key with its description.
    """
    console = Console()
    if schema:
        console.print_json(json.dumps(Recipe.model_json_schema()))
        return
    recipe = load_recipe(file)
    console.print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), highlight=False)
    print(f"derived numbers at world size {world_size}:")
    header = ("stage", "seq_len", "steps", "tokens/step", "seqs/step", "dp x sp", "grad_accum", "warmup", "tokens")
    rows = [header]
    for row in derived_numbers(recipe, world_size, recipe.select_stages(stage)):
        rows.append((
            row["stage"],
            format_count(row["seq_len"]),
            f"{row['steps']:,}",
            format_count(row["tokens_per_step"]),
            str(row["sequences_per_step"]),
            f"{row['data_parallel']} x {row['sequence_parallel']}",
            str(row["grad_accumulation"]),
            f"{row['warmup_steps']:,}",
            f"{row['tokens'] / 1e9:.2f}B" if row["tokens"] >= 1e8 else format_count(row["tokens"]),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))))


def list_recipes() -> None:
    """List the shipped recipes with their descriptions."""
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        recipe = load_recipe(path)
        print(f"{path.stem:<22} {recipe.description.splitlines()[0] if recipe.description else ''}")


def info() -> None:
    """Versions, devices and the document-attention backends available here."""
    import torch
    import transformers

    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__}")
    print(f"transformers  {transformers.__version__}")
    print(f"cuda          {torch.cuda.is_available()} ({torch.cuda.device_count()} device(s))")
    from prolong.model.attention import available_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"attention     {', '.join(available_backends(device))}")
