"""`prolong data synth RECIPE`: the command runs, prints its counts, and reports a dead endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prolong.cli import main
from prolong.config import save_recipe


def test_command_generates_and_resumes(make_recipe, chat_server, tmp_path: Path, capsys) -> None:
    recipe = make_recipe(endpoint=chat_server.url, endpoint_model="tiny", num_examples=6, max_new_tokens=64)
    path = tmp_path / "recipe.yaml"
    save_recipe(recipe, path)
    assert main(["data", "synth", str(path), "--num-examples", "5", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "items planned" in err and "summ examples in output" in err
    lines = Path(recipe.synth.output).read_text().splitlines()
    assert all(set(json.loads(line)) >= {"messages", "task"} for line in lines)
    # Raising the count later adds items to the same output, generating only the new ones.
    asked = len(chat_server.prompts)
    assert main(["data", "synth", str(path)]) == 0
    assert "already done (resumed)" in capsys.readouterr().err
    assert len(chat_server.prompts) > asked


def test_command_reports_a_dead_endpoint(make_recipe, chat_server, tmp_path: Path, capsys) -> None:
    recipe = make_recipe(endpoint=chat_server.url, endpoint_model="tiny", num_examples=4, max_retries=0)
    path = tmp_path / "recipe.yaml"
    save_recipe(recipe, path)
    chat_server.fail_next = 100
    assert main(["data", "synth", str(path), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "failed 1 times (last: HTTP 500" in err and "run the same command again to resume" in err


def test_help_is_the_docstring(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    out = capsys.readouterr().out
    assert (
        "Generate synthetic long instruction data" in out and "--num-examples" in out and "--workers" in out
    )
