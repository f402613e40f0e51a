"""Joint multi-task training: the loop (train), one step (step), stopping at a step boundary (stopping), optimizer and
schedule (optim), checkpoints, logging."""
