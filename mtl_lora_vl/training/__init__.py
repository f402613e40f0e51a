"""Joint multi-task training: the loop (train), one step (step), optimizer and schedule (optim), checkpoints, logging."""
