"""What a run reports while it trains: metrics.jsonl (and TensorBoard), the loss window, the progress bar."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..distributed import DistInfo, all_reduce_mean
from ..io.atomic import atomic_file
from ..log import interactive, line_bar, quiet

logger = logging.getLogger(__name__)


class MetricsLog:
    """Rows appended to ``metrics.jsonl``, plus TensorBoard events when tensorboard is installed; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resumed_at: int | None = None) -> None:
        """``resumed_at``: the step a resumed run continues from; TensorBoard drops the events the killed run
        wrote from it on and is given again the rows at it that metrics.jsonl keeps (:func:`truncate_metrics` has
        dropped the rest: written after the checkpoint, or a final validation it did not take), so no point shows
        twice or stale."""
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
            else:
                purge = {} if resumed_at is None else {"purge_step": resumed_at}
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), **purge)
                if resumed_at is not None and self.path.is_file():
                    for line in self.path.read_text().splitlines():   # (truncate_metrics left whole rows only)
                        row = json.loads(line) if line.strip() else {}
                        if isinstance(row, dict) and row.get("step") == resumed_at:
                            self._to_tensorboard(row)

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` to metrics.jsonl and TensorBoard (where enabled: rank 0; elsewhere nothing)."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._to_tensorboard(row)

    def _to_tensorboard(self, row: dict[str, Any]) -> None:
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()


class LossWindow:
    """Per-step losses and the samples seen since the last log line, averaged into the next row.

    ``losses`` (keyed by the row's names: ``loss``, ``loss/<task>``) goes into checkpoints, so a resumed run logs
    the same rows as an uninterrupted one.
    """

    def __init__(self, losses: dict[str, list[float]] | None = None) -> None:
        """``losses``: a checkpoint's window; one saved before windows took the row's names keys each task by its
        bare name (and a task named ``loss`` was lost in the total): renamed ``loss/<task>`` here."""
        self.losses: dict[str, list[float]] = {k if k == "loss" or k.startswith("loss/") else f"loss/{k}": list(v)
                                               for k, v in (losses or {}).items()}
        self.samples = 0
        self.t0 = time.perf_counter()

    def count(self, samples: int) -> None:
        """Add ``samples`` seen this step (for ``samples_per_s``)."""
        self.samples += samples

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The time spent inside (evaluation, a checkpoint) does not count against ``samples_per_s``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - start

    def add(self, step_losses: dict[str, float]) -> None:
        """Add one step's losses (``loss`` and ``loss/<task>``, :class:`~.step.StepResult`) to the window."""
        for k, v in step_losses.items():
            self.losses.setdefault(k, []).append(v)

    def flush(self, step: int, lr: float, info: DistInfo) -> dict[str, float]:
        """The log row (``loss``, ``loss/<task>``, ``step``, ``lr``, ``samples_per_s``), averaged over ranks;
        then start a new window. Every rank must call it (it all-reduces)."""
        rate = self.samples / max(1e-9, time.perf_counter() - self.t0)
        row = all_reduce_mean({k: sum(v) / len(v) for k, v in self.losses.items()}, info)
        row.update(step=step, lr=lr, samples_per_s=rate)
        self.losses, self.samples, self.t0 = {}, 0, time.perf_counter()
        return row


def replaced_rows(counts: dict[str, int], info: DistInfo) -> dict[str, int]:
    """``replaced_images/<task>``: training rows that used a substitute image so far, summed over ranks, for
    the tasks that had any (a clean run's rows do not change). Every rank must call it (it all-reduces)."""
    total = all_reduce_mean(counts, info)
    return {f"replaced_images/{t}": round(v * info.world_size) for t, v in sorted(total.items()) if v}


def truncate_metrics(path: Path, step: int, offered: int | None = None) -> None:
    """Drop log lines a killed run wrote after its last checkpoint (they will be written again), and a line
    it left half-written (a kill in the middle of a write); the file is replaced atomically. ``offered``: the last
    step whose validation the checkpoint's ``--keep-best`` state took; a selection row at ``step`` it did not take
    (the final validation, killed before its checkpoint) is dropped too: it is scored again."""
    if not path.is_file():
        return
    keep = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step", 0), (int, float)):
            logger.warning("%s:%d: not a log row (the run was killed while writing it, or it was edited); dropped",
                           path, n)
            continue
        stale = offered is not None and offered != step and row.get("step") == step and "eval/selection" in row
        if row.get("step", 0) <= step and not stale:
            keep.append(line)
    with atomic_file(path, overwrite=True, what="resume") as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def progress_bar(enabled: bool, start: int, total: int) -> tqdm:
    """The step progress bar (rank 0); a log file, not a terminal, gets a ``[mtl-lora-vl] train: ...`` line every
    15 s, not a bar redrawn with carriage returns; off at ``-q``."""
    disable = not enabled or quiet()
    if not interactive():
        return line_bar(desc="train", total=total, initial=start, unit="step", disable=disable)
    return tqdm(total=total, initial=start, disable=disable, desc="train", unit="step", dynamic_ncols=True,
                mininterval=0.1)
