"""Which model shape a plan uses: the config.json of the recipe's model, without any weights.

In order: the checkpoint's own config.json (`model.path`), else `model.config` (a config shipped with
prolong, or a path to a config.json), else, for a tiny `model.init` recipe, the config `prolong train`
would write. The shipped configs are the public config.json files of the models the recipes name, so a
user can plan before downloading anything:

  llama-3-8b    meta-llama/Meta-Llama-3-8B-Instruct (ProLong's base model; the base model's shapes
                are the same)
  llama-3.1-8b  meta-llama/Llama-3.1-8B-Instruct (UltraLong's base model)
  qwen2.5-7b    Qwen/Qwen2.5-7B-Instruct
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from prolong.config import Recipe
from prolong.errors import UserError
from prolong.model.io import build_config, load_tokenizer

CONFIGS_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the model configs shipped with prolong."""
    return sorted(p.parent.name for p in CONFIGS_DIR.glob("*/config.json"))


@dataclass
class PlanModel:
    """The config a plan builds its model from, and where it came from (printed with the plan)."""

    config: PretrainedConfig
    source: str


def _load(directory: Path, recipe: Recipe) -> PretrainedConfig:
    return AutoConfig.from_pretrained(
        directory, trust_remote_code=recipe.model.trust_remote_code, local_files_only=True
    )


def _named_config(name: str, recipe: Recipe) -> PlanModel:
    if (CONFIGS_DIR / name / "config.json").is_file():
        return PlanModel(_load(CONFIGS_DIR / name, recipe), f"shipped config {name}")
    path = Path(name)
    directory = path.parent if path.name == "config.json" else path
    if (directory / "config.json").is_file():
        return PlanModel(_load(directory, recipe), f"{directory / 'config.json'}")
    raise UserError(
        f"model.config: {name!r} is neither a shipped config ({', '.join(shipped_configs())}) nor a "
        "config.json file or a directory holding one"
    )


def _tiny_config(recipe: Recipe) -> PlanModel:
    spec = recipe.model.init
    assert spec is not None
    written = Path(recipe.output_dir) / "init"
    if (written / "config.json").is_file():
        return PlanModel(_load(written, recipe), f"{written / 'config.json'}")
    if recipe.tokenizer.train_vocab_size is not None:
        vocab = recipe.tokenizer.train_vocab_size
    elif recipe.tokenizer.path is not None and Path(recipe.tokenizer.path).is_dir():
        vocab = len(load_tokenizer(recipe.tokenizer.path))
    else:
        raise UserError(
            f"model.init: the vocabulary size of the tiny model comes from its tokenizer, and "
            f"tokenizer.path {recipe.tokenizer.path!r} is not a local directory"
        )
    vocab = -(-vocab // 64) * 64  # as `prolong train` rounds it (ensure_init_model)
    config = build_config(vocab_size=vocab, **spec.model_dump())
    return PlanModel(config, f"model.init ({spec.architecture}, vocabulary {vocab})")


def plan_model(recipe: Recipe) -> PlanModel:
    """The config of the recipe's model, from the checkpoint, `model.config` or `model.init`."""
    model = recipe.model
    if model.init is not None:
        return _tiny_config(recipe)
    assert model.path is not None
    if (Path(model.path) / "config.json").is_file():
        return PlanModel(_load(Path(model.path), recipe), f"{Path(model.path) / 'config.json'}")
    if model.config is not None:
        return _named_config(model.config, recipe)
    raise UserError(
        f"model.path {model.path!r} has no config.json on this machine; to plan without the checkpoint "
        f"set model.config to a shipped config ({', '.join(shipped_configs())}) or a config.json path"
    )
