"""Datasets: the built-in world, readers for standard formats, multi-task sampling and loaders."""
