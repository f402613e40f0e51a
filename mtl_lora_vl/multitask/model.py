"""MultiTaskModel: the adapted backbone plus one head per task; one forward serves a mixed batch.

The towers run once per step: the image tower on every row's images (rows of a task that reads several
images, NLVR2's pair, route image by image: ``image_segments``) and the text tower on the rows whose task
carries text, each pass under one route built from the loader's segments (adapter task ids, rows grouped
by task, boundaries computed on the host: no device sync, no id translation). Each task's loss then sees
only its own rows (see :mod:`mtl_lora_vl.data.loader` for the batch layout).

On a generative backbone (the batch carries ``"lm"``) the step is **one** language-model pass for every
row of every task -- prompts of different lengths padded, labels masked on prompts and padding -- routed per
row in the vision tower and the language model; ``backbone.lm_loss`` returns each row's loss and each task's
loss is computed from its own rows' losses.

Under DDP (``ranks`` set by the trainer) a kind with ``cross_rank_fields`` (retrieval's in-batch negatives)
gets its embeddings and those fields from every rank's rows, gathered with their gradients: each rank's
loss is the loss of the global batch, and DDP's averaged gradient is that loss's gradient, as one process at
the global batch size would compute it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..adapters.attach import attach_info
from ..adapters.routing import Route, Router
from ..adapters.scopes import may_recompute, route
from ..data.loader import sizes_kwarg, task_views
from ..distributed import DistInfo, gather_with_grad

if TYPE_CHECKING:
    from ..backbones import Backbone
    from ..tasks.base import TaskKind


class MultiTaskModel(nn.Module):
    """Backbone (with adapters) + heads; ``forward(batch)`` returns (weighted total loss, per-task losses)."""

    def __init__(self, backbone: Backbone, kinds: dict[str, TaskKind], heads: nn.ModuleDict):
        super().__init__()
        self.model = backbone.model  # registered, so DDP and the optimizer see the adapters
        self.heads = heads
        self.backbone = backbone
        self.kinds = kinds
        self.ranks: DistInfo | None = None   # DDP: gather cross_rank_fields kinds' rows (the trainer sets it)
        self.router: Router = attach_info(backbone.model).router  # routes go straight to it: no module walk
        # Whether a forward may be recomputed (activation checkpointing): routes without it skip the saved-tensor
        # hooks that carry a route into recomputation. Checked by train() (a walk over the modules, once per call).
        self.recompute = True

    def _route(self, batch: dict, segments_key: str, rows: Tensor | None = None) -> Route:
        """The route of one tower pass: the loader's segments, or (hand-made batches) the ids themselves."""
        segs = batch.get(segments_key)
        if segs is not None:
            return Route.from_segments(segs)
        ids = batch["task_ids"] if rows is None else batch["task_ids"][rows]
        return self.router.make_route(ids)

    def _image_route(self, batch: dict) -> Route:
        """The image tower's route: over the images, where rows hold several (``image_segments``), else the rows'."""
        if "image_segments" in batch:
            return Route.from_segments(batch["image_segments"])
        return self._route(batch, "segments")

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """(Weighted total loss, per-task losses) of one mixed batch. The image tower runs once on every row
        and the text tower once on the rows with text, each pass under one route from the batch's segments, so
        every row goes through its own task's adapter without a pass per task; each task's loss then runs under
        that task's route (for kinds that call the model again). A batch with ``"lm"`` takes the generative
        path instead (one routed language-model pass). ``batch["loss_scales"]`` (optional, task -> factor)
        scales a task's loss before it is weighted and summed: gradient accumulation's per-task row weights
        (:func:`mtl_lora_vl.training.step.task_row_scales`)."""
        scales = batch.get("loss_scales", {})
        if "lm" in batch:
            return self._forward_lm(batch, scales)
        bb = self.backbone
        with route(self.router, self._image_route(batch), recompute=self.recompute):
            image_emb = bb.encode_image(batch["images"])
        text_emb = None
        text_rows = batch["text_rows"]
        if text_rows.numel():
            with route(self.router, self._route(batch, "text_segments", text_rows), recompute=self.recompute):
                text_emb = bb.encode_text(batch["tokens"][text_rows])
        losses: dict[str, Tensor] = {}
        total = image_emb.new_zeros((), dtype=torch.float32)
        for name, rows in task_views(batch):
            kind = self.kinds[name]
            img = image_emb[rows.get("image_index", rows["rows"])]   # (n_t, k, D) for rows of k images each
            t = text_emb[rows["text_index"]] if kind.uses_text else None
            if kind.cross_rank_fields and self.ranks is not None:
                img, t, rows = self._every_rank(kind, img, t, rows)
            with route(self.router, name, recompute=self.recompute):  # kinds that run the model again (CoCa's decoder)
                loss = kind.loss(self.heads[name], bb, rows, img, t).float()
            losses[name] = loss * scales.get(name, 1.0)
            total = total + kind.spec.loss_weight * losses[name]
        return total, losses

    def _every_rank(self, kind: TaskKind, img: Tensor, text: Tensor | None,
                    rows: dict) -> tuple[Tensor, Tensor | None, dict]:
        """This task's embeddings and ``cross_rank_fields`` from every rank, in rank order."""
        assert self.ranks is not None
        rows = {**rows, **{f: gather_with_grad(rows[f], self.ranks) for f in kind.cross_rank_fields if f in rows}}
        text = gather_with_grad(text, self.ranks) if text is not None else None
        return gather_with_grad(img, self.ranks), text, rows

    def _forward_lm(self, batch: dict, scales: dict[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
        """Generative path: one routed ``lm_loss`` call for all rows, then each task's loss on its rows."""
        bb, lm = self.backbone, batch["lm"]
        with route(self.router, self._route(batch, "segments"), recompute=self.recompute):
            row_loss = bb.lm_loss(batch["images"], lm["input_ids"], lm["attention_mask"], lm["labels"],
                                  first_label=batch.get("lm_first_label"), image_counts=batch.get("lm_image_counts"),
                                  **sizes_kwarg(batch["images"], batch.get("image_sizes"), bb.needs_image_sizes))
        losses: dict[str, Tensor] = {}
        total = row_loss.new_zeros((), dtype=torch.float32)
        for name, rows in task_views(batch):
            kind = self.kinds[name]
            rows["lm_loss"] = row_loss[rows["rows"]]
            loss = kind.loss(self.heads[name], bb, rows, None, None).float()
            losses[name] = loss * scales.get(name, 1.0)
            total = total + kind.spec.loss_weight * losses[name]
        return total, losses

    def train(self, mode: bool = True) -> MultiTaskModel:
        """Train mode, except normalization layers of the frozen base that keep running statistics
        (BatchNorm in a ResNet tower): in train mode they would update those statistics -- base weights
        an adapter file does not carry -- so a fresh base loading the adapter would not be the trained model."""
        super().train(mode)
        if mode:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats \
                        and not any(p.requires_grad for p in m.parameters(recurse=False)):
                    m.eval()
            self.recompute = may_recompute(self.model)
        return self

    def trainable_state(self) -> dict[str, Tensor]:
        """Every tensor training changes (adapters and heads), for checkpoints."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Put back what :meth:`trainable_state` saved; a checkpoint of another run's tensors is refused by name."""
        mine = dict(self.named_parameters())
        wanted = {n for n, p in mine.items() if p.requires_grad}
        missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit this run: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                "resume with the same tasks, method and rank"
            )
        with torch.no_grad():
            for n, t in state.items():
                if mine[n].shape != t.shape:
                    raise ValueError(f"checkpoint tensor {n} has shape {tuple(t.shape)}, this run "
                                     f"{tuple(mine[n].shape)}")
                mine[n].copy_(t)
