"""README.md's ```python blocks run as written: each block is read from the README, its placeholders (``RUN_DIR``,
``model``, ``task_ids``, ``...`` arguments) are replaced by real values -- a tiny CLIP run and a tiny LLaVA run on the
built-in backbones, made once per module, and tiny models built from configs -- and the block is executed; what a
block states (shapes, counts, the printed format) is asserted. A block that names a model this test cannot load (a
local 7B LLaVA on a GPU) runs on the built-in LLaVA instead, as said where it is substituted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from test_eval_zero_shot import _small_spec
from test_llava_next import build as build_llava_next
from vlm_checks import pictures as draw_pictures

import mtl_lora_vl as mlv
from mtl_lora_vl.backbones import builtin_dir, load_backbone
from mtl_lora_vl.backbones.builtin import builtin_llava_dir
from mtl_lora_vl.cli import train_main

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.M | re.S)

pytestmark = pytest.mark.skipif(not (builtin_dir() / "model.safetensors").is_file()
                                or not (builtin_llava_dir() / "config.json").is_file(),
                                reason="built-in backbones not built (scripts/pretrain_backbone.py, pretrain_llava.py)")


def _block(opening: str) -> str:
    """The one README python block whose first line starts with ``opening``."""
    found = [b for b in BLOCKS if b.startswith(opening)]
    assert len(found) == 1, f"README.md: {len(found)} python blocks open with {opening!r}"
    return found[0]


def _substituted(code: str, swaps: dict[str, str]) -> str:
    """``code`` with each placeholder replaced; a placeholder no longer in the block fails (update the swap)."""
    for old, new in swaps.items():
        assert old in code, f"README block no longer holds {old!r}:\n{code}"
        code = code.replace(old, new)
    return code


def _run(code: str, **names: object) -> dict:
    """Execute ``code`` with ``names`` defined; its namespace afterwards."""
    namespace = dict(names)
    exec(compile(code, str(README), "exec"), namespace)   # noqa: S102 - the README's own example code
    return namespace


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Path:
    """RUN_DIR of the CLIP job (`--tasks vqa,retrieval`), 2 steps on small splits."""
    tmp = tmp_path_factory.mktemp("clip")
    tasks = ",".join(_small_spec(tmp, t, 24, 16) for t in ("vqa", "retrieval"))
    assert train_main(["--tasks", tasks, "--steps", "2", "--batch-size", "8", "--warmup", "0", "--workers", "0",
                       "--eval-batch-size", "16", "--skip-zero-shot", "--out", str(tmp / "run"), "-q"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory) -> Path:
    """RUN_DIR of the LLaVA job (`--backbone builtin-llava --tasks vqa,captioning`), 2 steps on small splits."""
    tmp = tmp_path_factory.mktemp("llava_run")
    tasks = ",".join(_small_spec(tmp, t, 6, 6) for t in ("vqa", "captioning"))
    assert train_main(["--backbone", "builtin-llava", "--tasks", tasks, "--steps", "2", "--warmup", "0",
                       "--workers", "0", "--eval-batch-size", "8", "--skip-zero-shot", "--out", str(tmp / "run"),
                       "-q"]) == 0
    return tmp / "run"


def test_every_python_block_is_run_here():
    """A python block added to the README gets a test here (each test below finds its block by its first line)."""
    openings = ["import torch\nimport mtl_lora_vl as mlv\n\nbb = mlv.backbones.load_backbone(\"builtin\")",
                "bb = mlv.backbones.load_backbone(\"hf:", "model = LlavaNextForConditionalGeneration",
                "import mtl_lora_vl as mlv\n\ncfg = mlv.MTLLoRAConfig(", "model = mlv.MTLLoRAModel(base_model, cfg)"]
    assert len(BLOCKS) == len(openings) and all(sum(b.startswith(o) for b in BLOCKS) == 1 for o in openings)


def test_load_the_clip_jobs_adapter(clip_run):
    """Set up and run: a run's adapter onto a fresh built-in CLIP, routed features; load_pretrained in one call."""
    code = _substituted(_block("import torch\nimport mtl_lora_vl as mlv\n\nbb"), {"RUN_DIR": str(clip_run)})
    ns = _run(code)
    assert ns["features"].shape == (2, ns["bb"].embed_dim)                  # two pictures, routed through vqa
    assert ns["bb"].model._mtl_lora.config.tasks == ["vqa", "retrieval"]
    backbone, heads, cfg = ns["backbone"], ns["heads"], ns["cfg"]
    assert backbone.name == "builtin" and sorted(heads) == ["retrieval", "vqa"] and cfg.tasks == ["vqa", "retrieval"]


def test_language_model_api():
    """The language-model API block: its 7B LLaVA-1.5 on a GPU (a local folder) is swapped for the built-in LLaVA
    on the CPU, the model given adapters for the block's tasks, and the `...` of bb.model.generate filled in."""
    bb = load_backbone("builtin-llava", device="cpu")
    mlv.attach(bb.model, mlv.MTLLoRAConfig(tasks=["vqa", "nlvr"], r=4))
    side = bb.image_size
    pixel_values = bb.preprocess_uint8(torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8))
    left_and_right = bb.preprocess_uint8(torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8))
    prompts = [f"{bb.image_token} question: what colour is the cube? answer:"]
    gen = bb.lm_collator()(prompts)
    code = _substituted(_block('bb = mlv.backbones.load_backbone("hf:'), {
        'bb = mlv.backbones.load_backbone("hf:/models/llava-1.5-7b-hf", device="cuda")': "",
        "input_ids=..., pixel_values=..., attention_mask=...":
            'input_ids=gen["input_ids"], pixel_values=pixel_values, attention_mask=gen["attention_mask"]'})
    ns = _run(code, mlv=mlv, bb=bb, task_ids=["vqa"], pixel_values=pixel_values, prompts=prompts, gen=gen,
              left_and_right=left_and_right)
    assert ns["loss"].shape == (1,) and torch.isfinite(ns["loss"]).all()                 # (B,)
    assert len(ns["texts"]) == 1 and isinstance(ns["texts"][0], str)
    assert ns["ids"].shape[0] == 1 and ns["ids"].shape[1] > gen["input_ids"].shape[1] - 1
    assert bb.several_images and ns["scores"].shape == (1, 2)                             # 2 images, 1 row: (1, 2)
    assert (ns["scores"] <= 0).all()                                                      # log-probs


def test_llava_next_own_loop(tmp_path):
    """LLaVA-NeXT in your own loop: rows of two, one and no pictures under a mixed route (a tiny model and its
    LlavaNextProcessor built from configs)."""
    from transformers import LlavaNextForConditionalGeneration

    _, processor, folder = build_llava_next(tmp_path)
    batch_texts = ["<image> <image> describe", "<image> what colour is the circle", "how many"]
    ns = _run(_block("model = LlavaNextForConditionalGeneration"), mlv=mlv, path=str(folder), processor=processor,
              LlavaNextForConditionalGeneration=LlavaNextForConditionalGeneration, texts=batch_texts,
              pictures=draw_pictures([(20, 60), (40, 40), (64, 24)]), task_ids=["captioning", "vqa", "vqa"],
              labels=processor(text=batch_texts, images=draw_pictures([(20, 60), (40, 40), (64, 24)]),
                               return_tensors="pt", padding=True)["input_ids"])
    assert ns["loss"].dim() == 0 and torch.isfinite(ns["loss"])


def test_python_api(clip_run, tmp_path, monkeypatch):
    """The Python API block on the built-in CLIP (open_clip): attach, route, merge, save, load, export, add_task."""
    monkeypatch.chdir(tmp_path)
    bb = load_backbone("builtin")
    _, heads, _ = mlv.load_pretrained(str(clip_run / "adapter"))
    images = bb.preprocess_uint8(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8))
    fresh = load_backbone("builtin").model
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    code = _block("import mtl_lora_vl as mlv\n\ncfg = mlv.MTLLoRAConfig(")
    ns = _run(code, model=bb.model, task_ids=torch.tensor([0, 1, 0]), images=images, batch=images,
              loss_fn=lambda out: out[0].square().sum(), heads=heads, fresh_base_model=fresh,
              optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    # the run's first line: the CLIP job's figures, as the README's table gives them
    assert mlv.parameter_report(bb.model) == {"image": 141_408, "text": 141_408, "adapter_total": 282_816,
                                             "base_frozen": 1_713_409, "adapted_projections": 32}
    assert ns["image_features"].shape == (3, bb.embed_dim)
    other = load_backbone("builtin").model
    other.load_state_dict(ns["state"], strict=True)                  # loads into a fresh base model, strict=True
    assert all(torch.equal(before[k], other.state_dict()[k]) for k in before if "visual.conv1" in k)
    assert (tmp_path / "out/adapter/mtl_lora_config.json").is_file()
    assert ns["model"] is fresh and not any(p.requires_grad for n, p in fresh.named_parameters() if "lora_A" in n)
    # the export's format: PEFT for Hugging Face models, the plain layout for open_clip (as the block's comment says)
    assert (tmp_path / "out/vqa_peft/lora_config.json").is_file()
    assert not (tmp_path / "out/vqa_peft/adapter_config.json").exists()
    assert {p.name for p in (tmp_path / "out/peft").iterdir() if p.is_dir()} == {"vqa", "retrieval"}
    # the block saved an untrained adapter (B_i all zero), so the new task has nothing to mix: every projection idle
    assert ns["added"].name == "counting" and ns["added"].task_id == 2 and len(ns["added"].idle) == 32
    assert [f.name for f in ns["mlv"].FAMILIES][:2] == ["open_clip", "hf_clip"]


def test_peft_style_model_api(llava_run, tmp_path, monkeypatch, capsys):
    """The PEFT-style block on the built-in LLaVA: run/adapter is the LLaVA job's adapter."""
    from transformers import LlavaForConditionalGeneration

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").symlink_to(llava_run)
    bb = load_backbone("builtin-llava", device="cpu")
    pixels = bb.preprocess_uint8(torch.randint(0, 256, (2, 3, bb.image_size, bb.image_size), dtype=torch.uint8))
    prompts = bb.lm_collator()([f"{bb.image_token} question: what colour is the cube? answer:"] * 2)
    inputs = {"input_ids": prompts["input_ids"], "attention_mask": prompts["attention_mask"], "pixel_values": pixels}

    def fresh() -> torch.nn.Module:
        return LlavaForConditionalGeneration.from_pretrained(str(builtin_llava_dir())).eval()

    code = _substituted(_block("model = mlv.MTLLoRAModel(base_model, cfg)"), {
        "input_ids=..., pixel_values=...": 'input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"]'})
    ns = _run(code, mlv=mlv, base_model=fresh(), fresh_base_model=fresh(), inputs=inputs, heads={},
              cfg=mlv.MTLLoRAConfig(tasks=["vqa", "captioning"], r=4))
    assert re.fullmatch(r"trainable params: 0 \|\| all params: [\d,]+ \|\| trainable%: 0\.0000\n",
                        capsys.readouterr().out)                     # frozen, eval mode
    assert ns["out"].logits.shape[0] == 2
    assert (tmp_path / "out/adapter/mtl_lora_config.json").is_file()
    assert type(ns["plain"]) is LlavaForConditionalGeneration and not hasattr(ns["plain"], "_mtl_lora")
