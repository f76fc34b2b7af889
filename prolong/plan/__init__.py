"""`prolong plan`: a recipe stage at its real size, dry-run on fake tensors, and its per-GPU memory.

No analytic model: the planner runs the code `prolong train` runs (the stage's model from its
config.json on the meta device, `parallelize`, AdamW, `train_step`) on fake tensors in a fake process
group of the planned world size, and torch's FSDP2 memory tracker counts what the step allocates.

  fake.py          the fake world: fake process group, fake tensors, the tracker for a dry run
  attention.py     a stand-in with the GPU flash kernels' memory (they cannot run on fake tensors)
  dry_run.py       one stage, one optimizer step; the layout and the memory it found
  memory.py        the tracker's categories, grouped (parameters, gradients, optimizer state, ...)
  model_config.py  which config.json: the checkpoint's, a shipped one (configs/), or model.init
  search.py        --max-length: the longest seq_len that fits, per sequence-parallel degree
  report.py        the table, the verdict and JSON
  commands.py      `prolong plan` and `prolong train`'s check
  measure.py       a real step's peak on this machine, to check the planner against

Device memory and host memory: dry runs use the fake CPU device for the GPU (a CPU-only torch cannot
run FSDP2 on fake CUDA) and the meta device for host memory, so a policy that moves tensors to the
host (activation offload) is counted apart: MemoryPlan.host.
"""
