"""Task specs for benchmark runs: copies of the built-in specs with smaller validation and test splits.

Every run of a grid scores the same examples, so the evaluation subset only has to be the same for all
methods, not the full split; smaller splits make a many-run grid fit a CPU budget. Specs that read
files are used as given (their splits are whatever the files hold).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..data.sampler import MultiTaskBatchSampler
from ..options import TrainOptions
from ..tasks import load_spec
from ..tasks.spec import SpecError
from .runner import write_text_atomic


def eval_subset_specs(tasks: list[str], out_dir: Path, sizes: dict[str, int | None]) -> dict[str, str]:
    """``{task name: spec argument}`` for ``tasks`` (names or paths). A built-in-world spec is copied
    to ``out_dir`` with ``n = sizes[split]`` scenes in each of its splits named in ``sizes`` (None:
    keep the world's size; a split that already sets ``n`` keeps it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, str] = {}
    for task in tasks:
        spec = load_spec(task)
        if spec.data.source != "builtin" or spec.source_file is None or all(v is None for v in sizes.values()):
            result[spec.name] = task
            continue
        text = Path(spec.source_file).read_text()
        for split, n in sizes.items():
            if n is None or split not in spec.data.splits or "n" in spec.data.splits[split]:
                continue
            text, found = re.subn(rf"^(\[data\.{split}\][ \t]*(#.*)?)$", rf"\1\nn = {int(n)}", text, count=1,
                                  flags=re.M)
            if not found:  # the split comes from the defaults: give it a table of its own
                text = f"{text.rstrip()}\n\n[data.{split}]\nn = {int(n)}\n"
        path = out_dir / f"{spec.name}.toml"
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
        try:
            copy = load_spec(str(path))
        except SpecError as e:   # e.g. an inline `val = {}` table, which a [data.val] table would declare twice
            raise ValueError(f"{spec.source_file}: its copy with evaluation sizes could not be read ({e}); give the "
                             "spec a [data.<split>] table per split (not an inline one)") from None
        wrong = [s for s, n in sizes.items() if n is not None and s in copy.data.splits
                 and "n" not in spec.data.splits[s] and copy.data.splits[s].get("n") != int(n)]
        if wrong:
            raise ValueError(f"{spec.source_file}: could not set the size of split(s) {wrong} in its copy {path}; "
                             "give the spec a [data.<split>] table per split")
        result[spec.name] = str(path)
    return result


def joint_shares(task_args: dict[str, str], batch_size: int, data_root: str | None = None) -> dict[str, float]:
    """Each task's share of the rows of a joint run's batches of ``batch_size`` (the trainer's default sampler
    over the training split sizes, small tasks' shares floored at one row a batch); a single-task reference
    with batch ``B * share`` sees as many examples of its task."""
    d = TrainOptions()
    sizes = [len(load_spec(arg).load_split("train", data_root).examples) for arg in task_args.values()]
    sampler = MultiTaskBatchSampler(sizes, batch_size, strategy=d.sampling, temperature=d.sampling_temperature,
                                    mode=d.batch_mode)
    return dict(zip(task_args, sampler.shares))
