"""The adapter layers (the math), routing, the attach/merge machinery."""

from .attach import (
    AttachError,
    attach,
    attach_info,
    merge,
    merged_state_dict,
    parameter_report,
    trainable_parameters,
    unmerge,
)
from .routing import RoutingError, disabled, route

__all__ = ["AttachError", "RoutingError", "attach", "attach_info", "disabled", "merge", "merged_state_dict",
           "parameter_report", "route", "trainable_parameters", "unmerge"]
