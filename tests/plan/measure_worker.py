"""Run under torchrun (gloo): the measured peak of one real optimizer step of each validation case at
this world size. Rank 0 writes {case name: peak bytes} to OUT_JSON.

    torchrun --nproc_per_node 2 measure_worker.py OUT_JSON
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from prolong.parallel.mesh import ParallelMesh, init_distributed
from prolong.plan.measure import VALIDATION_CASES, measure_step, validation_recipe
from prolong.plan.model_config import plan_model


def main(out: str) -> None:
    init_distributed()
    peaks = {}
    for case in VALIDATION_CASES:
        if case.world_size != dist.get_world_size():
            continue
        recipe = validation_recipe(case)
        mesh = ParallelMesh.create(case.sequence_parallel)
        peaks[case.name] = measure_step(recipe, recipe.stages[0], plan_model(recipe).config, mesh)
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as handle:
            json.dump(peaks, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
