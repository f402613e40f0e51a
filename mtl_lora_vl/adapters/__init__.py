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
from .grow import AddedTask, add_task, freeze_old_rows
from .routing import Route, Router, RoutingError
from .scopes import disabled, may_recompute, route

__all__ = ["AddedTask", "AttachError", "Route", "Router", "RoutingError", "add_task", "attach", "attach_info",
           "disabled", "freeze_old_rows", "may_recompute", "merge", "merged_state_dict", "parameter_report", "route",
           "trainable_parameters", "unmerge"]
