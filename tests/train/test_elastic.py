"""Dead ranks restart on their own: under `torchrun --max-restarts 1`, SIGKILL one worker at a random
moment; torchrun restarts the group, the restarted workers resume from the newest verified checkpoint
without a flag (training.resume: auto), and the per-step losses and exported weights equal those of an
uninterrupted run at the same layout, bitwise. 2 processes (dp 2) and 4 (SP 2 x DP 2); these take
minutes here (make test-slow). The default suite checks that a restarted group forms at all."""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from ckpt_helpers import ENV, FAULT_RUN, STEPS, TORCHRUN, losses, run, stage1_recipe, train_command
from safetensors.torch import load_file

pytestmark = pytest.mark.distributed
RESTART_WORKER = Path(__file__).with_name("ckpt_restart_worker.py")


def test_restarted_workers_form_their_group_again() -> None:
    """The process group of a restarted attempt forms (it once hung >10 min in init_process_group)."""
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--max-restarts=1", str(RESTART_WORKER), "20"]
    result = run(command, timeout=240)
    # the two ranks share one stdout pipe: a line of one can land inside the other's
    assert sorted(re.findall(r"attempt \d+ rank \d+: [\d.]+", result.stdout)) == [
        "attempt 1 rank 0: 2",
        "attempt 1 rank 1: 2",
    ]


def _last_logged_step(stage_dir: Path) -> int:
    try:
        return max(losses(stage_dir), default=0)
    except ValueError:  # a line being written
        return 0


def _kill_one_worker_during(command: list, stage_dir: Path, rng: random.Random) -> tuple[int, str]:
    """Start `command`, SIGKILL a random worker once a random step has been logged; its exit code and
    what was killed when."""
    target_step, extra_delay = rng.randint(1, STEPS - 1), rng.uniform(0.0, 1.0)
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while _last_logged_step(stage_dir) < target_step:
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(extra_delay)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True)
               if str(FAULT_RUN) in " ".join(p.cmdline())]
    victim = rng.choice(workers)
    victim.kill()
    output, _ = process.communicate(timeout=900)
    return process.returncode, f"killed worker pid {victim.pid} after step {target_step} + {extra_delay:.2f}s\n{output}"


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("nproc,sp", [(2, 1), (4, 2)])
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_nothing_happened(
    ckpt_data: dict, tmp_path: Path, nproc: int, sp: int
) -> None:
    clean = tmp_path / "clean"
    run(train_command(stage1_recipe(ckpt_data, clean, sequence_parallel=sp), nproc), timeout=900)
    killed = tmp_path / "killed"
    command = train_command(stage1_recipe(ckpt_data, killed, sequence_parallel=sp), nproc, "none", 1)
    rng = random.Random()
    code, story = _kill_one_worker_during(command, killed / "stage1", rng)
    assert code == 0, story[-6000:]
    assert "resume: yes (training.resume: auto, torchrun restart 1 of run" in story, story[-4000:]
    assert losses(killed / "stage1") == losses(clean / "stage1"), story[:200]
    ours, theirs = (load_file(d / "stage1" / "export" / "model.safetensors") for d in (killed, clean))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), story[:200]
