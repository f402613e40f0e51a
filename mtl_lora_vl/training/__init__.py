"""Joint multi-task training: the loop, checkpoints."""
