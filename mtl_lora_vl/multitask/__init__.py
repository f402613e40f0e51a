"""The adapted backbone plus one head per task, and the Setup that builds it for training and evaluation."""

from .model import MultiTaskModel
from .setup import Setup, build_setup, extend_setup, extended_options

__all__ = ["MultiTaskModel", "Setup", "build_setup", "extend_setup", "extended_options"]
