"""Qwen2-VL's packed tower under a mixed batch of three interleaved tasks, rows holding 2, 0, 1, 2, 1 and 0 images of
six sizes (packed runs of 16 to 32 patches), the merger adapted: each row's logits equal that row run alone under its
task, and beam search returning two sequences per row (num_beams 3) gives each row its task's own."""

from __future__ import annotations

import torch
from qwen_tiny import IMG_TOK, MERGER, PATCH, VE, VS, tiny_qwen2vl
from vl_tiny import left_padded
from vlm_checks import perturb_adapters

import mtl_lora_vl as mlv
from mtl_lora_vl.families import family_named

SIZES = [(32, 32), (32, 64), (48, 32), (16, 16), (64, 16), (16, 48)]
COUNTS, IDS = [2, 0, 1, 2, 1, 0], [0, 1, 2, 1, 0, 2]


def _rows() -> tuple[list[list[int]], list[list[torch.Tensor]], list[list[list[int]]]]:
    g = torch.Generator().manual_seed(0)
    rows, pvs, thws, k = [], [], [], 0
    for r, c in enumerate(COUNTS):
        t = torch.randint(3, 90, (4 + r,), generator=g).tolist()
        toks, pv, thw = [1, *t[:2]], [], []
        for _ in range(c):
            gh, gw = SIZES[k][0] // PATCH, SIZES[k][1] // PATCH
            k += 1
            toks += [VS, *[IMG_TOK] * (gh * gw // 4), VE]
            pv.append(torch.randn(gh * gw, 384, generator=g, dtype=torch.float64))
            thw.append([1, gh, gw])
        rows.append(toks + t[2:])
        pvs.append(pv)
        thws.append(thw)
    return rows, pvs, thws


def _batch(sel: list[int]) -> dict:
    rows, pvs, thws = _rows()
    ids, mask = left_padded([rows[i] for i in sel])
    x = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMG_TOK).int())
    if any(COUNTS[i] for i in sel):
        x["pixel_values"] = torch.cat([p for i in sel for p in pvs[i]])
        x["image_grid_thw"] = torch.tensor([t for i in sel for t in thws[i]])
    return x


def test_interleaved_tasks_over_rows_of_0_1_2_images_of_many_sizes_equal_each_row_alone():
    torch.manual_seed(0)
    m = tiny_qwen2vl().eval()
    row = family_named("qwen2_vl").targets
    mlv.attach(m, mlv.MTLLoRAConfig(tasks=["a", "b", "c"], r=4, targets={"image": [*row["image"], MERGER],
                                                                         "text": list(row["text"])}))
    perturb_adapters(m).double()
    full = _batch(list(range(len(IDS))))
    L = full["input_ids"].shape[1]
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=3, num_return_sequences=2,
              pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        with mlv.route(m, IDS):
            mixed = m(**full).logits
            routed = m.generate(**full, **kw)[:, L:]
        for i, t in enumerate(IDS):
            with mlv.route(m, t):
                alone = m(**_batch([i])).logits[0]
                gen = m.generate(**_batch([i]), **kw)[:, -4:]
            torch.testing.assert_close(mixed[i, L - alone.shape[0]:], alone, atol=1e-10, rtol=1e-10)
            assert torch.equal(routed[2 * i:2 * i + 2], gen), i
        with mlv.route(m, "a"):
            other = m(**full).logits
    assert (other[1] - mixed[1]).abs().max() > 1e-3   # the tasks differ
