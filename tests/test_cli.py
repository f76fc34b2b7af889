"""The CLI table: every command resolves to a typed function with help, and arguments parse."""

from __future__ import annotations

import importlib

import pytest

from prolong.cli import COMMANDS, build_parser, main


def example(path: str, count: int = 3, rate: float | None = None, fast: bool = False, names: list[str] | None = None) -> None:
    """Do an example thing.

    Longer description.
    """


def test_parser_follows_the_signature():
    parser = build_parser("example", example)
    args = parser.parse_args(["p", "--count", "5", "--fast", "--names", "a", "b"])
    assert vars(args) == {"path": "p", "count": 5, "rate": None, "fast": True, "names": ["a", "b"]}
    assert "Do an example thing." in parser.format_help()


@pytest.mark.parametrize("words", sorted(COMMANDS))
def test_every_command_is_importable_and_documented(words):
    module_name, function_name = COMMANDS[words][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    assert (function.__doc__ or "").strip(), f"{words}: the function's docstring is its --help"
    build_parser(words, function)


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "usage: prolong COMMAND" in capsys.readouterr().err
