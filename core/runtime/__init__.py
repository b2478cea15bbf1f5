"""What a run needs around its algorithm: the run directory, background jobs, checkpoints, processes."""
