"""The `prolong` command: one table of subcommands, each mapped to one typed function.

A command's arguments come from its function's signature (parameters without a default are
positional, the others are `--options`), and its docstring is its `--help`. Modules are imported only
for the command that runs, so `prolong recipe show` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable

# command words -> ("module:function", one-line summary for `prolong --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "recipe validate": ("prolong.recipe_commands:validate", "check recipe files"),
    "recipe show": ("prolong.recipe_commands:show", "print a resolved recipe and its derived numbers"),
    "recipe list": ("prolong.recipe_commands:list_recipes", "list the shipped recipes"),
    "tokenizer train": ("prolong.data.commands:train_tokenizer", "train a byte-level BPE tokenizer"),
    "model init": ("prolong.model.commands:init", "write a randomly initialised HF checkpoint"),
    "data local-corpus": ("prolong.data.commands:local_corpus", "gather real text found on this machine"),
    "data build": ("prolong.data.commands:build", "tokenize, pack and mix a recipe's data"),
    "data stats": ("prolong.data.commands:stats", "token and length statistics of packed shards"),
    "data peek": ("prolong.data.commands:peek", "decode one packed sequence"),
    "data synth": ("prolong.synth.commands:synth", "generate synthetic long instruction data"),
    "train": ("prolong.train.commands:train", "run a recipe's training stages"),
    "plan": ("prolong.plan.commands:plan", "per-GPU memory of each stage at its real size, without GPUs"),
    "checkpoint verify": ("prolong.train.commands:verify", "check checkpoints against their manifests"),
    "eval": ("prolong.eval.commands:eval", "long-context evaluation (HELMET/RULER)"),
    "eval perplexity": ("prolong.eval.commands:perplexity", "loss by position on long documents"),
    "demo": ("prolong.demo:demo", "the whole recipe in miniature, on this machine"),
    "ablate": ("prolong.ablate:ablate", "paired tiny runs that change one thing of the demo's long stage"),
    "info": ("prolong.recipe_commands:info", "versions, devices and attention backends"),
}


def _load(target: str) -> Callable[..., object]:
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def _base_type(annotation: object) -> tuple[type, bool]:
    """(the type argparse converts to, whether None is allowed) for an annotation."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"typing": typing})  # annotations are simple builtin types
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return annotation, False  # type: ignore[return-value]


def build_parser(words: str, function: Callable[..., object]) -> argparse.ArgumentParser:
    """An argparse parser for `function`, its docstring as help."""
    doc = inspect.getdoc(function) or ""
    summary, _, details = doc.partition("\n")
    parser = argparse.ArgumentParser(
        prog=f"prolong {words}",
        description=f"{summary}\n{details}".strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, param in inspect.signature(function).parameters.items():
        kind, optional = _base_type(param.annotation)
        flag = "--" + name.replace("_", "-")
        if param.default is inspect.Parameter.empty and typing.get_origin(kind) is list:
            parser.add_argument(name, nargs="+", type=typing.get_args(kind)[0])
        elif param.default is inspect.Parameter.empty:
            parser.add_argument(name, type=kind)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=param.default)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, dest=name, nargs="+", type=typing.get_args(kind)[0], default=param.default)
        else:
            shown = "none" if param.default is None and optional else param.default
            parser.add_argument(flag, dest=name, type=kind, default=param.default, help=f"default: {shown}")
    return parser


def _usage() -> str:
    width = max(len(w) for w in COMMANDS)
    lines = ["usage: prolong COMMAND [ARGS] (prolong COMMAND --help for details)", "", "commands:"]
    lines += [f"  {words:<{width}}  {summary}" for words, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `prolong` console script and `python -m prolong`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for n_words in (2, 1):
        words = " ".join(argv[:n_words])
        if words in COMMANDS and all(not w.startswith("-") for w in argv[:n_words]):
            break
    else:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    function = _load(COMMANDS[words][0])
    args = build_parser(words, function).parse_args(argv[n_words:])
    from prolong.config import RecipeError
    from prolong.errors import UserError

    try:
        result = function(**vars(args))
    except (RecipeError, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
