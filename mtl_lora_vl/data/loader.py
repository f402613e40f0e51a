"""Multi-task loaders: uint8 images and tokens made in workers, normalised on the device.

Workers decode each image to a ``(3, S, S)`` uint8 tensor (``S = backbone.image_size``, resized the way
the backbone's checkpoint declares: ``backbone.resize``; a ``native`` resize keeps each image's own aspect and
size, and a batch puts them on one canvas, :func:`pad_images`), ask the task
kind for the row's text and fields, and collate: the text of a batch is tokenised there, in one
tokenizer call. On the main process :func:`to_device` copies the batch non-blocking (from pinned
memory when CUDA is available) and converts the images to normalised floats **on the device** in the
autocast dtype (``backbone.preprocess_uint8``; :mod:`mtl_lora_vl.data.device_batch`, exported here).

Batch layout (what :class:`MultiTaskLoader` yields; B rows, grouped by task in adapter-id order)::

    batch["task_ids"]   LongTensor (B,)       each row's task as the adapter's task id (the index in
                                              MTLLoRAConfig.tasks; also when the loader trains only
                                              some of the adapter's tasks: see ``adapter_tasks``)
    batch["segments"]   tuple of (task_id, start, stop)   the rows of each task present, in row
                                              order (host ints, made here: routing needs no device sync)
    batch["text_segments"]  same, over the positions of ``text_rows``
    batch["indices"]    LongTensor (B,)       example index within its task's split
    batch["images"]     uint8 (B, 3, S, S)    -> float (B, 3, S, S) in ``dtype`` after to_device()
                                              (images of different sizes: (B, 3, H, W), each image at
                                              the top left, H and W the largest, zeros elsewhere)
    batch["image_sizes"]  tuple of (h, w)     each image's size (host ints; the language model's
                                              image-token count of a native-resolution backbone)
    batch["image_segments"]  like segments, over the images: only when a task's rows hold several
                                              images each (NLVR2's pair; ``images`` then has one entry per
                                              image, a row's images in order, and ``image_sizes`` too)
    batch["tokens"]     LongTensor (B, L)     each row's text tokenised (a row without text holds
                                              the tokens of ""); absent on the generative path
    batch["lm"]         {                     generative path only (the kinds run through a language
                                              model): every row's prompt + target, made by
                                              ``backbone.lm_collator()`` in the workers
        "input_ids":      LongTensor (B, T)   prompt + target + end token, image placeholder
                                              expanded, right-padded to the batch's longest row
        "attention_mask": LongTensor (B, T)
        "labels":         LongTensor (B, T)   the target's ids and the end token; -100 on the
                                              prompt and on padding
    }
    batch["lm_first_label"]  int              generative path: the first labelled position (host int:
                                              lm_loss needs it and would otherwise read the labels on the device)
    batch["lm_image_counts"]  list[int]       generative path: each row's images (its prompt's placeholders),
                                              which lm_loss passes on (LLaVA-OneVision's batch_num_images)
    batch["text_rows"]  LongTensor (N_text,)  rows whose task ``uses_text``: the text-tower rows
    batch["tasks"]      {task_name: {         only the tasks present in this batch
        "rows":       LongTensor (n_t,)       this task's rows of the batch (contiguous)
        "text_index": LongTensor (n_t,)       its rows' positions among ``text_rows`` (uses_text only)
        "image_index": LongTensor (n_t, k)    its rows' images in ``images`` (only with image_segments;
                                              (n_t,) for a task of one image per row)
        "token_key":  LongTensor (n_t,)       a key of each row's token ids, only for a kind whose loss compares
                                              rows by it (``"token_key"`` in its ``cross_rank_fields``: retrieval's
                                              duplicate captions): equal for texts that tokenize alike
        <fields>:     Tensor (n_t, ...)       the kind's own per-row tensors, stacked
                                              (vqa "targets", classification "labels",
                                               retrieval "image_key", "text_key")
        "lm_weight":  FloatTensor (n_t,)      generative path: the weight the kind gave each row's
                                              LM loss (VQA: the sampled answer's soft score)
    }}

One training step then runs each tower once, one route per tower pass (what
:class:`mtl_lora_vl.multitask.model.MultiTaskModel` does)::

    batch = to_device(batch, device, dtype, backbone)
    with route(router, Route.from_segments(batch["segments"])):
        image_emb = backbone.encode_image(batch["images"])
    text_emb = None
    if batch["text_rows"].numel():
        with route(router, Route.from_segments(batch["text_segments"])):
            text_emb = backbone.encode_text(batch["tokens"][batch["text_rows"]])
    for name, rows in task_views(batch):                      # rows: this task's images/tokens/fields
        kind = kinds[name]
        t = text_emb[rows["text_index"]] if kind.uses_text else None
        with route(router, name):                             # for kinds that run the model themselves
            loss = loss + spec.loss_weight * kind.loss(heads[name], backbone, rows,
                                                       image_emb[rows["rows"]], t)

On the generative path the step is one language-model pass for every row of every task, under one
route (the vision tower and the language model both read it)::

    with route(router, Route.from_segments(batch["segments"])):
        row_loss = backbone.lm_loss(batch["images"], **batch["lm"], first_label=batch["lm_first_label"],
                                    image_counts=batch["lm_image_counts"],
                                    **sizes_kwarg(batch["images"], batch["image_sizes"],
                                                backbone.needs_image_sizes))  # (B,)
    for name, rows in task_views(batch):
        rows["lm_loss"] = row_loss[rows["rows"]]
        loss = loss + spec.loss_weight * kind.loss(heads[name], backbone, rows, None, None)

Per-row random choices (VQA's answer drawn by soft score: the ``draw`` passed to ``sample_lm``) come
from the row's own seed (:mod:`mtl_lora_vl.data.seeding`: a function of seed, rank, step and position), so
they are the same with any number of workers and after a resume, and differ from epoch to epoch.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mtl_lora_vl.adapters.routing import id_runs
from mtl_lora_vl.data.anyres import pad_images
from mtl_lora_vl.data.device_batch import sizes_kwarg, task_views, to_device, to_floats  # noqa: F401  (exported here)
from mtl_lora_vl.data.fallback import ImageFallback, current_policy
from mtl_lora_vl.data.records import Example, Split
from mtl_lora_vl.data.resize import ImageResize
from mtl_lora_vl.data.sampler import MultiTaskBatchSampler
from mtl_lora_vl.data.seeding import SeededBatches, SeededDataset, loader_generator, reseed_loader
from mtl_lora_vl.data.text_columns import drop_padding, row_keys
from mtl_lora_vl.data.worker_errors import RefuseStopIteration, carry_errors, worker_errors_unwrapped
from mtl_lora_vl.data.worker_start import evaluation_workers, ignore_stop_signals, sent_or_named
from mtl_lora_vl.log import progress
from mtl_lora_vl.wording import tasks_named


class _Kind(Protocol):
    """What the loader needs of a task kind (see :class:`mtl_lora_vl.tasks.base.TaskKind`)."""

    name: str
    uses_text: bool
    generative: bool
    lm_end: str

    def sample_text(self, example: Example) -> str | None: ...

    def sample_fields(self, example: Example, index: int) -> dict[str, Tensor]: ...

    def sample_lm(self, example: Example, draw: int) -> tuple[str, str, float]: ...


def _resize_of(backbone: Any) -> ImageResize:
    """The backbone's image resize (an object with only ``image_size`` gets the shorter-side default)."""
    return ImageResize.of(getattr(backbone, "resize", None) or int(backbone.image_size))


class TaskDataset(Dataset):
    """One task's examples as rows ``{"image", "text", "index", "fields"}`` (made in a worker); on the
    generative path also ``"lm"``: the kind's ``(prompt, target, weight)``, its random choices fixed by a
    ``draw`` taken from Python's ``random`` (seeded for every row by :class:`SeededDataset`), and ``"lm_end"``,
    the token that ends its target (``kind.lm_end``).

    A row whose image cannot be decoded is replaced by another row of the task, counted and reported
    once per file (``self.images``, an :class:`ImageFallback`); ``split.strict`` raises instead.
    """

    def __init__(self, kind: _Kind, split: Split, image_size: ImageResize | int) -> None:
        if not split.examples:
            raise ValueError(f"task {kind.name!r} has no examples to load")
        self.kind = kind
        self.examples = split.examples
        self.resize = ImageResize.of(image_size)
        self.image_size = self.resize.size
        self.generative = bool(getattr(kind, "generative", False))
        self.images = ImageFallback(kind.name, split.examples, self.resize, strict=split.strict)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        read = [index]   # the row read: another one when this row's image fails (the one a StopIteration names)
        with RefuseStopIteration(lambda: f"task {self.kind.name!r}, row {read[0]} (example "
                                         f"{self.examples[read[0]].image_id!r}"
                                         f"{f', in place of row {index}' if read[0] != index else ''})"):
            return self._row(index, read)

    def _row(self, index: int, read: list[int]) -> dict[str, Any]:
        asked = index
        index, image = self.images.decode(index)   # another row of the task if this image fails
        read[0] = index
        ex = self.examples[index]
        row = {"image": image, "text": self.kind.sample_text(ex), "replaced": index != asked,
               "index": index, "fields": self.kind.sample_fields(ex, index)}
        if self.generative:
            row["lm"] = self.kind.sample_lm(ex, random.getrandbits(63))
            row["lm_end"] = self.kind.lm_end   # a chat task's end of turn ("": the tokenizer's end token)
        return row


class MultiTaskDataset(Dataset):
    """Several :class:`TaskDataset` addressed by ``(task_id, index)`` (what the batch sampler yields)."""

    def __init__(self, datasets: Sequence[TaskDataset]) -> None:
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        task, index = key
        row = self.datasets[task][index]
        row["task_id"] = task
        return row


class MultiTaskCollate:
    """Collate rows of several tasks into the batch layout of the module docstring (runs in workers).

    ``task_ids[i]`` is the adapter's task id of task i of this loader (default: i, when the loader's
    tasks are the adapter's tasks in order). With ``lm_collator`` (a generative backbone's picklable
    ``backbone.lm_collator()``), every row's ``(prompt, target)`` is tokenised into ``batch["lm"]`` and
    ``tokens`` is left out; else ``tokenizer`` makes ``tokens`` (without the padding columns every row shares
    when ``text_padding`` gives the ``(pad, end)`` ids: a backbone's ``short_text``), and the tasks ``token_keys``
    marks get their rows' ``token_key`` (hashed only for them: the other kinds' collates do not pay for it). Images of
    different sizes (a ``native`` resize) go on one canvas (:func:`pad_images`).
    """

    def __init__(self, task_names: Sequence[str], uses_text: Sequence[bool], tokenizer: Any,
                 task_ids: Sequence[int] | None = None, *, lm_collator: Any = None,
                 text_padding: tuple[int, int] | None = None, token_keys: Sequence[bool] | None = None) -> None:
        self.task_names = list(task_names)
        self.uses_text = list(uses_text)
        self.token_keys = [False] * len(self.task_names) if token_keys is None else [bool(k) for k in token_keys]
        if len(self.token_keys) != len(self.task_names):
            raise ValueError(f"MultiTaskCollate: token_keys {self.token_keys} must give one flag per task "
                             f"{self.task_names}")
        self.tokenizer = tokenizer
        self.text_padding = text_padding
        self.lm_collator = lm_collator
        self.task_ids = list(range(len(self.task_names))) if task_ids is None else [int(t) for t in task_ids]
        if len(self.task_ids) != len(self.task_names) or len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"MultiTaskCollate: task_ids {self.task_ids} must give one distinct id per task "
                             f"{self.task_names}")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        aid = self.task_ids
        rows = sorted(rows, key=lambda r: aid[r["task_id"]])   # stable: keeps the sampler's order within a task
        ids = [aid[r["task_id"]] for r in rows]
        batch: dict[str, Any] = {
            "task_ids": torch.tensor(ids, dtype=torch.long),
            "segments": tuple(id_runs(ids)),
            "indices": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            # rows given another row's image, per task: counted by the training loop as batches are consumed
            "replaced": dict(Counter(self.task_names[r["task_id"]] for r in rows if r.get("replaced"))),
        }
        # a row's image: (3, H, W); several: a (k, 3, H, W) stack, or a tuple of k images of their own sizes
        own = [r["image"] if isinstance(r["image"], tuple | list) else [r["image"]] if r["image"].dim() == 3
               else r["image"].unbind(0) for r in rows]
        counts = [len(x) for x in own]
        batch["images"], batch["image_sizes"] = pad_images([im for x in own for im in x])
        several = any(c != 1 for c in counts)
        starts = [0, *itertools.accumulate(counts)]   # row i's images: starts[i] .. starts[i + 1]
        if several:   # rows of several images: the image tower's route and each task's images go by image
            batch["image_segments"] = tuple(id_runs([t for t, c in zip(ids, counts) for _ in range(c)]))
        lm_weight = full_tokens = None
        if self.lm_collator is not None:   # (a row of several images: its prompt holds one placeholder per image)
            lm = [r.get("lm") for r in rows]
            if any(x is None for x in lm):
                bad = self.task_names[rows[lm.index(None)]["task_id"]]
                raise ValueError(f"task {bad!r} gave no (prompt, target) for the language model; on a generative "
                                 "backbone every task kind must implement sample_lm")
            batch["lm"] = dict(self.lm_collator([p for p, _, _ in lm], [t for _, t, _ in lm],
                                                [r["lm_end"] for r in rows], image_sizes=batch["image_sizes"]))
            batch["lm_first_label"] = self.lm_collator.first_labelled(batch["lm"]["labels"])   # here, not on the device
            batch["lm_image_counts"] = counts   # (known here: from the ids they can read two ways)
            lm_weight = torch.tensor([float(w) for _, _, w in lm], dtype=torch.float32)
        else:
            batch["tokens"] = self.tokenizer([r["text"] if r["text"] is not None else "" for r in rows])
            full_tokens = batch["tokens"]   # (keys read before the padding is cut: its width depends on the batch)
            if self.text_padding is not None:
                batch["tokens"] = drop_padding(batch["tokens"], *self.text_padding)
        text_rows: list[int] = []
        tasks: dict[str, dict[str, Tensor]] = {}
        for t in sorted(range(len(self.task_names)), key=lambda i: aid[i]):
            idx = [i for i, r in enumerate(rows) if r["task_id"] == t]
            if not idx:
                continue
            view: dict[str, Tensor] = {"rows": torch.tensor(idx, dtype=torch.long)}
            if several:   # a task's rows hold k images each (its kind's): their positions, (n_t, k) or (n_t,)
                k = {counts[i] for i in idx}
                if len(k) != 1:
                    raise ValueError(f"task {self.task_names[t]!r} gives rows of {sorted(k)} images; every row of a "
                                     "task holds the same number of images")
                index = [list(range(starts[i], starts[i + 1])) for i in idx]
                view["image_index"] = torch.tensor([x[0] for x in index] if k == {1} else index, dtype=torch.long)
            if self.uses_text[t]:
                view["text_index"] = torch.arange(len(text_rows), len(text_rows) + len(idx))
                text_rows.extend(idx)
                if full_tokens is not None and self.token_keys[t]:
                    view["token_key"] = row_keys(full_tokens[idx])
            for key in rows[idx[0]]["fields"]:
                view[key] = torch.stack([rows[i]["fields"][key] for i in idx])
            if lm_weight is not None:
                view["lm_weight"] = lm_weight[idx]
            tasks[self.task_names[t]] = view
        batch["text_rows"] = torch.tensor(text_rows, dtype=torch.long)
        batch["text_segments"] = tuple(id_runs([ids[i] for i in text_rows]))
        batch["tasks"] = tasks
        return batch


class MultiTaskLoader:
    """Training loader over several tasks: a :class:`MultiTaskBatchSampler` feeding a ``DataLoader``.

    ``kinds[i]`` and ``splits[i]`` are the loader's task i. Rows carry the adapter's task ids:
    ``adapter_tasks`` is the adapter's task list (``MTLLoRAConfig.tasks``) when the loader trains only some
    of its tasks (an ``--extend`` run), else the loader's tasks are taken to be the adapter's, in order.
    ``per_step``: batches per optimizer step (``--accumulate``; a homogeneous step's batches hold one task).
    Iterating yields batches in the layout of
    the module docstring. ``state_dict()`` is the sampler state after the batches the caller has
    consumed (not those the workers prefetched), so a resumed loader yields exactly the next batches;
    starting a new iteration also continues from the consumed position.
    """

    def __init__(self, kinds: Sequence[_Kind], splits: Sequence[Split], backbone: Any, *, batch_size: int,
                 strategy: str = "proportional", temperature: float = 2.0, mode: str = "mixed", seed: int = 0,
                 steps: int | None = None, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 prefetch_factor: int | None = None, pin_memory: bool | None = None,
                 adapter_tasks: Sequence[str] | None = None, per_step: int = 1) -> None:
        if len(kinds) != len(splits):
            raise ValueError(f"MultiTaskLoader got {len(kinds)} task kinds but {len(splits)} splits")
        names = [k.name for k in kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"MultiTaskLoader got duplicate task names {names}")
        task_ids = None
        if adapter_tasks is not None:
            unknown = [n for n in names if n not in adapter_tasks]
            if unknown:
                raise ValueError(f"MultiTaskLoader: {tasks_named(unknown, 'are')} not in the adapter's tasks "
                                 f"{list(adapter_tasks)}")
            task_ids = [list(adapter_tasks).index(n) for n in names]
        generative = [bool(getattr(k, "generative", False)) for k in kinds]
        if any(generative) and not all(generative):
            llm = [n for n, g in zip(names, generative) if g]
            other = [n for n, g in zip(names, generative) if not g]
            raise ValueError(f"MultiTaskLoader: {tasks_named(llm, 'run')} through a language model but "
                             f"{tasks_named(other, 'do')} not; build every kind on the same backbone")
        self.task_names = names
        self.datasets = [TaskDataset(k, s, _resize_of(backbone)) for k, s in zip(kinds, splits)]
        self.sampler = MultiTaskBatchSampler([len(d) for d in self.datasets], batch_size, strategy=strategy,
                                             temperature=temperature, mode=mode, seed=seed, steps=steps,
                                             rank=rank, world_size=world_size, per_step=per_step)
        if generative and all(generative):
            self.collate = MultiTaskCollate(names, [False] * len(names), None, task_ids,
                                            lm_collator=backbone.lm_collator())
        else:
            self.collate = MultiTaskCollate(names, [k.uses_text for k in kinds], backbone.tokenizer, task_ids,
                                            text_padding=(backbone.pad_id, backbone.eos_id)
                                            if getattr(backbone, "short_text", False) else None,
                                            token_keys=["token_key" in getattr(k, "cross_rank_fields", ())
                                                        for k in kinds])
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor or 2}
        # Rows are made under their own seeds and the workers' seeds come from the loader's generator
        # (mtl_lora_vl.data.seeding), so batches do not depend on workers or resumption.
        self.generator = loader_generator()
        dataset, collate = carry_errors(SeededDataset(MultiTaskDataset(self.datasets)), self.collate)
        self.loader = DataLoader(dataset, batch_sampler=SeededBatches(self.sampler), collate_fn=collate,
                                 num_workers=num_workers, generator=self.generator,
                                 pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                                 worker_init_fn=ignore_stop_signals, **extra)
        self.consumed = self.sampler.step

    def __len__(self) -> int:
        return len(self.sampler) if self.sampler.steps is None else max(0, self.sampler.steps - self.consumed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Rewind the sampler past batches a previous iterator prefetched but nobody consumed.
        if self.sampler.step != self.consumed:
            self.sampler.load_state_dict(self.sampler.state_dict(self.consumed))
        reseed_loader(self.generator, self.sampler.seed, self.sampler.rank, self.consumed)
        replaced: Counter[str] = Counter()   # of the batches taken (workers may have made more ahead)
        for batch in worker_errors_unwrapped(self.loader):
            self.consumed += 1
            replaced.update(batch.get("replaced") or {})
            yield batch
        for name, d in zip(self.task_names, self.datasets):
            d.images.report(replaced[name])

    def close(self) -> None:
        """Stop the workers now. Persistent workers ignore SIGTERM (see :func:`ignore_stop_signals`), so after
        a failure, with the iterator kept alive by the exception's traceback, the process waited for them
        forever at exit (and under torchrun the other ranks with it)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def state_dict(self) -> dict[str, Any]:
        """Sampler state after the consumed batches (JSON-able)."""
        return self.sampler.state_dict(self.consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state saved by :meth:`state_dict`."""
        self.sampler.load_state_dict(state)
        self.consumed = self.sampler.step


# ---------------------------------------------------------------------------------------------- evaluation


class _ImageDataset(Dataset):
    def __init__(self, images: ImageFallback) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.count

    def __getitem__(self, index: int) -> Tensor:
        with RefuseStopIteration(lambda: f"task {self.images.task!r}, reading the image of row {index}"):
            return self.images.decode(index)[1]   # a row whose image fails gets a substitute image


def iter_sized_image_batches(backbone: Any, examples: Sequence[Example], *, batch_size: int,
                             device: torch.device | str, dtype: torch.dtype = torch.float32,
                             num_workers: int = 0, strict: bool | None = None, task: str | None = None,
                             several: bool = False) -> Iterator[tuple[Tensor, tuple[tuple[int, int], ...]]]:
    """Normalised ``dtype`` image batches on ``device``, in order, ``batch_size`` examples each (evaluation), with
    each image's ``(h, w)``: images of different sizes (a ``native`` resize) share one canvas (:func:`pad_images`).

    An image that cannot be decoded is replaced by another example's image (reported once per file, and
    counted when the pass ends); ``strict=True`` raises an :class:`ImageError` naming the file instead.
    ``task`` and ``strict`` default to those of the enclosing :func:`~mtl_lora_vl.data.fallback.decode_policy`
    (a task kind's ``evaluate`` opens one), else ``"evaluation"`` and False. ``several``: each example is one image
    of a row of several, which a model may read otherwise than an image alone (OneVision: one padded view).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    policy_task, policy_strict = current_policy() or ("evaluation", False)
    images = ImageFallback(policy_task if task is None else task, examples, _resize_of(backbone),
                           strict=policy_strict if strict is None else strict, several=several)
    dataset, collate = carry_errors(_ImageDataset(images), pad_images)
    # (workers from the fork server in a process group, where a fork may copy held locks; data/worker_start.py)
    start = evaluation_workers(num_workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers,
                        pin_memory=device.type == "cuda", **start)
    batches = worker_errors_unwrapped(loader)
    if "multiprocessing_context" in start:   # sent pickled: an example that does not pickle is named
        batches = sent_or_named(batches, images.examples, images.task)
    for batch, sizes in progress(batches, desc="images", unit="batch", total=len(loader)):
        yield to_floats(backbone, batch.to(device, non_blocking=True), dtype, sizes), sizes
    images.report()


def iter_image_batches(backbone: Any, examples: Sequence[Example], *, batch_size: int,
                       device: torch.device | str, dtype: torch.dtype = torch.float32,
                       num_workers: int = 0, strict: bool | None = None,
                       task: str | None = None) -> Iterator[Tensor]:
    """:func:`iter_sized_image_batches` without the sizes, for a backbone whose images are all of one size (the
    towers that embed an image batch); images of different sizes are refused."""
    for images, sizes in iter_sized_image_batches(backbone, examples, batch_size=batch_size, device=device,
                                                  dtype=dtype, num_workers=num_workers, strict=strict, task=task):
        if len(set(sizes)) > 1:
            raise ValueError(f"backbone {getattr(backbone, 'name', backbone)!r} resizes images to sizes of their own "
                             f"(here {sorted(set(sizes))}), which an image batch of one size cannot hold; use "
                             "iter_sized_image_batches and pass the sizes on (image_sizes=)")
        yield images
