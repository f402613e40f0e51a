"""Helper 455: a merged folder takes no weights file of its source folder in any framework's format. Only PyTorch's
(.safetensors, .bin, .pth, .pt) were left out, so a Hugging Face model folder's ``flax_model.msgpack`` and
``tf_model.h5`` (or an open_clip folder's ``model.onnx``, a llama.cpp ``model.gguf``) were copied beside the merged
weights: the base model's weights, without the task, which TensorFlow / Flax / ONNX / llama.cpp users then loaded."""

from __future__ import annotations

import json

import torch
from conftest import tiny_open_clip

import mtl_lora_vl as mlv

OTHER_WEIGHTS = ("flax_model.msgpack", "tf_model.h5", "model.onnx", "model.onnx_data", "model.gguf",
                 "model.ckpt.index", "model.ckpt.data-00000-of-00001", "model.tflite", "weights.npz")


def test_weights_files_of_other_frameworks_are_not_copied_into_a_merged_folder(tmp_path):
    src = tmp_path / "base"
    src.mkdir()
    (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}, "preprocess_cfg": {}}))
    (src / "tokenizer.json").write_text('{"vocab": 1}')
    (src / "notes.h5.txt").write_text("a text file whose name holds .h5")
    for name in OTHER_WEIGHTS:
        (src / name).write_bytes(b"stale base weights")
    torch.manual_seed(0)
    model = mlv.attach(tiny_open_clip().eval(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2))
    out = mlv.save_merged(model, "a", tmp_path / "merged", source_dir=src)
    copied = sorted(p.name for p in out.iterdir())
    assert not set(OTHER_WEIGHTS) & set(copied), copied
    assert {"open_clip_config.json", "tokenizer.json", "notes.h5.txt"} <= set(copied), copied
