"""`prolong eval` parses through the CLI table's signature-driven parser."""

from __future__ import annotations

from prolong.cli import build_parser
from prolong.eval import commands
from prolong.eval.runner import parse_lengths
from prolong.eval.tasks import CATEGORIES, resolve_tasks


def test_eval_command_arguments() -> None:
    parser = build_parser("eval", commands.eval)
    args = parser.parse_args(["/m", "--tasks", "recall,rag_nq", "--lengths", "8k,16384", "--no-chat", "--short"])
    assert args.model_dir == "/m" and args.tasks == "recall,rag_nq" and args.chat is False and args.short
    assert parser.parse_args(["/m"]).chat is None  # auto: chat template present -> chat prompting
    assert "Long-context evaluation" in parser.description


def test_task_and_length_resolution() -> None:
    assert parse_lengths("8k,4096,8192") == [4096, 8192]
    assert resolve_tasks("recall") == ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"]
    assert resolve_tasks("niah_multikey_3,ruler_niah_mk_3,vt") == ["ruler_niah_mk_3", "ruler_vt"]
    assert set(resolve_tasks("synthetic")) == set(CATEGORIES["synthetic"]) and len(CATEGORIES["icl"]) == 5
