"""Parallelism in one place: the device mesh, Ulysses sequence parallelism, and `parallelize`."""

from prolong.layout import validate_sequence_parallel
from prolong.parallel.mesh import ParallelMesh, init_distributed
from prolong.parallel.parallelize import decoder_layers, hf_model_of, parallelize
from prolong.parallel.ulysses import register_ulysses_attention, sp_shard_batch, ulysses_attention

__all__ = [
    "ParallelMesh",
    "decoder_layers",
    "hf_model_of",
    "init_distributed",
    "parallelize",
    "register_ulysses_attention",
    "sp_shard_batch",
    "ulysses_attention",
    "validate_sequence_parallel",
]
