"""What breaks at scale, as a user meets it through `prolong train`: a damaged checkpoint, a full disk
while checkpointing or exporting, data that changed under a run, a kill during an asynchronous save, a
rank that hangs. Each either continues exactly (losses equal the uninterrupted run's, bitwise) or stops
with a message naming what to fix, and never leaves the previous checkpoint unusable."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
from ckpt_helpers import interrupted_copy, losses, run, stage1_recipe, train_command

from prolong import publish
from prolong.train.checkpoint import latest_checkpoint, verify_checkpoint

VERIFY = [sys.executable, "-m", "prolong", "checkpoint", "verify"]


def _steps(reference: dict, first: int) -> dict[int, float]:
    return {s: loss for s, loss in reference["losses"].items() if s >= first}


def test_a_damaged_checkpoint_is_named_and_the_previous_one_resumes_bitwise(
    ckpt_data: dict, ckpt_reference: dict, tmp_path: Path
) -> None:
    recipe = interrupted_copy(ckpt_data, ckpt_reference["out"], tmp_path / "run")
    checkpoints = tmp_path / "run" / "stage1" / "checkpoints"
    shard = checkpoints / "step_00000008" / "__0_0.distcp"  # a node died while flushing it
    shard.write_bytes(shard.read_bytes()[:1000])

    checked = run([*VERIFY, str(tmp_path / "run")], expect=1)
    lines = checked.stdout.strip().splitlines()
    assert lines[0].startswith(f"ok      {checkpoints / 'step_00000004'}")
    assert lines[1].startswith(f"DAMAGED {checkpoints / 'step_00000008'}: {shard}: 1000 bytes, the manifest says ")

    resumed = run(train_command(recipe, 1, "none", 0, "--resume"))
    fallback = [line for line in resumed.stdout.splitlines() if "the newest checkpoint that verifies" in line]
    assert len(fallback) == 1 and fallback[0].startswith("resuming from step_00000004, the newest checkpoint")
    assert "step_00000008" in fallback[0] and "__0_0.distcp: 1000 bytes" in fallback[0]
    assert losses(tmp_path / "run" / "stage1") == _steps(ckpt_reference, 5)
    assert run([*VERIFY, str(checkpoints)]).returncode == 0  # step 8 written again, whole


def test_a_full_disk_while_checkpointing_stops_naming_path_and_errno(
    ckpt_data: dict, ckpt_reference: dict, tmp_path: Path
) -> None:
    recipe = interrupted_copy(ckpt_data, ckpt_reference["out"], tmp_path / "run", drop_steps=(8,))
    checkpoints = tmp_path / "run" / "stage1" / "checkpoints"
    failed = run(train_command(recipe, 1, "enospc-checkpoint:8", 0, "--resume"), expect=2)
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: checkpoint step_00000008: cannot write {checkpoints}/.step_00000008.tmp-")
    assert "[Errno 28 ENOSPC] No space left on device" in error
    assert error.endswith(f"the previous checkpoint {checkpoints / 'step_00000004'} is intact")
    assert "Traceback" not in failed.stderr
    assert latest_checkpoint(checkpoints).name == "step_00000004"
    assert verify_checkpoint(checkpoints / "step_00000004") == []
    assert publish.leftovers(checkpoints) == []  # the partial step 8 is gone: it would fill the disk further


def test_a_full_disk_while_exporting_keeps_the_checkpoints_and_resume_finishes(
    ckpt_data: dict, ckpt_reference: dict, tmp_path: Path
) -> None:
    recipe = interrupted_copy(ckpt_data, ckpt_reference["out"], tmp_path / "run")
    stage = tmp_path / "run" / "stage1"
    failed = run(train_command(recipe, 1, "enospc-export", 0, "--resume"), expect=2)
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: stage 'stage1' export: cannot write {stage / 'export'}: [Errno 28 ENOSPC]")
    assert f"its checkpoints in {stage / 'checkpoints'} are intact" in error
    assert not (stage / "export").exists() and publish.leftovers(stage) == []
    assert verify_checkpoint(stage / "checkpoints" / "step_00000008") == []
    run(train_command(recipe, 1, "none", 0, "--resume"))
    assert (stage / "export" / "model.safetensors").is_file()


def test_changed_or_vanished_data_refuses_to_resume_naming_the_shard(
    ckpt_data: dict, ckpt_reference: dict, tmp_path: Path
) -> None:
    data = dict(ckpt_data, shard_dir=str(tmp_path / "shards"))
    shutil.copytree(ckpt_data["shard_dir"], data["shard_dir"])
    recipe = interrupted_copy(data, ckpt_reference["out"], tmp_path / "run")
    meta = tmp_path / "shards" / "stage1" / "web@128" / "meta.json"
    meta.write_text(meta.read_text().replace('"num_sequences"', '"num_sequences_note": 0, "num_sequences"'))
    refused = run(train_command(recipe, 1, "none", 0, "--resume"), expect=2)
    assert "the data changed since it was written: shard web@128: " in refused.stderr
    assert f"{meta} changed" in refused.stderr and "restore those shards" in refused.stderr

    shutil.rmtree(tmp_path / "shards" / "stage1" / "web@128")
    refused = run(train_command(recipe, 1, "none", 0, "--resume"), expect=2)
    assert f"{tmp_path / 'shards' / 'stage1' / 'web@128'}: shard missing or incomplete" in refused.stderr


def test_a_kill_during_an_async_save_resumes_from_the_previous_checkpoint(
    ckpt_data: dict, ckpt_reference: dict, tmp_path: Path
) -> None:
    recipe = interrupted_copy(ckpt_data, ckpt_reference["out"], tmp_path / "run", drop_steps=(8,),
                              async_checkpoint="on")
    checkpoints = tmp_path / "run" / "stage1" / "checkpoints"
    killed = run(train_command(recipe, 1, "kill-async-save:8", 0, "--resume"), expect=-signal.SIGKILL)
    assert "checkpoints: asynchronous (training.async_checkpoint: on)" in killed.stdout
    assert latest_checkpoint(checkpoints).name == "step_00000004"  # step 8 was being written: never published
    assert publish.leftovers(checkpoints)  # its temporary, swept by the next run
    run(train_command(recipe, 1, "none", 0, "--resume"))
    assert losses(tmp_path / "run" / "stage1") == _steps(ckpt_reference, 5)
    assert verify_checkpoint(checkpoints / "step_00000008") == [] and publish.leftovers(checkpoints) == []


@pytest.mark.distributed
def test_a_hung_rank_is_named_with_the_step_and_the_collective(ckpt_data: dict, tmp_path: Path) -> None:
    recipe = stage1_recipe(ckpt_data, tmp_path / "run", collective_timeout_s=5)
    failed = run(train_command(recipe, 2, "stall:1:2:30"), expect=None, timeout=300)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "rank 0 of 2 failed in step 2 during all_reduce of 3 numbers over dp " in output, output[-4000:]
    assert "(training.collective_timeout_s = 5)" in output
