"""Training: the state and the step, the loop, checkpoints, metrics and the run folder."""
