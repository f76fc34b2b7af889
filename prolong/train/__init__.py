"""The training engine: one loop for continued pretraining and SFT, stages, checkpoints, metrics."""
