"""The run's opening line (:func:`describe`): what trains (adapter and head sizes; an ``--extend`` run's new tasks and
what it freezes), where, in which precision, into which folder. ``train.start`` logs it once the run is set up.
"""

from __future__ import annotations

from ..adapters.attach import parameter_report
from .run import Run


def grown_parts(method: str, lambda_type: str) -> tuple[str, str]:
    """What an --extend run trains of an adapter of ``method`` for its new tasks, and what it freezes (in words)."""
    if method == "task_lora":
        return "their own A_t, B_t", "the other tasks' A_t, B_t frozen"
    if method == "moe_lora":
        return "their gate rows w_t", "A and every expert B_i frozen"
    if method == "mtl_lora":
        return ("their w_t" if lambda_type == "none" else "their Lambda_t, w_t"), "A and every B_i frozen"
    return "none: its tasks share every adapter tensor", "the whole adapter frozen"


def describe(run: Run) -> str:
    """The run's opening line: what trains (adapter and head sizes), where, in which precision, into which folder."""
    setup, opts, info = run.setup, run.opts, run.info
    model = setup.model
    heads_n = sum(p.numel() for p in model.heads.parameters() if p.requires_grad)
    where = (f"device {info.device}, precision {str(run.amp_dtype).replace('torch.', '')}, "
             f"world size {info.world_size}; run directory {run.dir}")
    if opts.extend:
        trains, frozen = grown_parts(setup.config.method, setup.config.lambda_type)
        return (f"extending {opts.extend} (tasks {setup.extended_from}, frozen) with {run.trained}: "
                f"training {setup.new_adapter_values:,} adapter values ({trains}) and {heads_n:,} "
                f"head parameters; {frozen}; {where}")
    report = parameter_report(model.model)
    return (f"{opts.backbone}: {report['adapter_total']:,} adapter parameters "
            f"(image {report['image']:,}, text {report['text']:,}) on {report['adapted_projections']} "
            f"projections, {heads_n:,} head parameters, {report['base_frozen']:,} frozen; {where}")
