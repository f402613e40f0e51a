"""Bad input gets a clear message naming the thing and the fix: task spec fields (``loss_weight``,
``templates``, ``data.world_kind``), ``format_version`` of an adapter's config, ``--device``, an export that
would overwrite one of several targets, log lines printed once when a library adds a root handler, and the
program name in ``mtl-lora-vl bench --help``."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_open_clip
from test_export import oc_dir, trained_run  # noqa: F401 - fixtures of a saved adapter

import mtl_lora_vl as mlv
from mtl_lora_vl.cli import main
from mtl_lora_vl.data.world import KINDS as WORLD_KINDS
from mtl_lora_vl.distributed import pick_device
from mtl_lora_vl.io.adapter_files import ADAPTER_CONFIG, AdapterFileError, read_adapter_config
from mtl_lora_vl.log import PACKAGE_LOGGER, cli_logging
from mtl_lora_vl.tasks import SpecError, load_spec

# ---------------------------------------------------------------------------------------------- task specs


def _spec(tmp_path: Path, top: str = "", data: str = "") -> Path:
    path = tmp_path / "task.toml"
    path.write_text(f'kind = "vqa"\n{top}\n[data]\nsource = "builtin"\n{data}\n')
    return path


@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-inf", "0.0"])
def test_loss_weight_must_be_a_finite_positive_number(tmp_path, value):
    path = _spec(tmp_path, f"loss_weight = {value}")
    with pytest.raises(SpecError, match=rf"{re.escape(str(path))}: field 'loss_weight': expected a positive "
                                        rf"number \(finite, e.g. 1.0\), got {value.lstrip('+')}"):
        load_spec(path)


@pytest.mark.parametrize("template", ["the {x} is {}.", "a {0} {}", "{} and {}", "no placeholder", "a {} {",
                                      "a {} }", "a large {:d}.", "a {!x}", "a {!r}"])   # format spec / conversion:
# accepted, then "Unknown format code 'd'" once the model had loaded
def test_templates_with_other_fields_are_refused_when_the_spec_is_read(tmp_path, template):
    path = _spec(tmp_path, f"templates = {json.dumps(['{}', template])}")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: field 'templates[1]'") and "exactly one '{}'" in msg and repr(template) in msg


def test_templates_may_hold_literal_braces(tmp_path):
    spec = load_spec(_spec(tmp_path, 'templates = ["{{a}} {}", "the answer is {}."]'))
    assert [t.format("red") for t in spec.templates] == ["{a} red", "the answer is red."]


def test_world_kind_is_checked_when_the_spec_is_read(tmp_path):
    path = _spec(tmp_path, data='world_kind = "nonsense"')
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: field 'data.world_kind'") and "'nonsense'" in msg
    assert all(kind in msg for kind in WORLD_KINDS if kind != "pretrain")   # pretrain: no val or test split
    assert load_spec(_spec(tmp_path, data='world_kind = "vqa"')).data.options["world_kind"] == "vqa"


# ---------------------------------------------------------------------------------------------- logging


def test_cli_lines_are_printed_once_when_a_library_added_a_root_handler(capsys):
    root, package = logging.getLogger(), logging.getLogger(PACKAGE_LOGGER)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # what logging.basicConfig() installs, e.g. via open_clip
    root.addHandler(handler)
    try:
        with cli_logging("info"):
            assert not package.propagate
            logging.getLogger(f"{PACKAGE_LOGGER}.some.module").warning("only once")
        assert package.propagate  # restored
    finally:
        root.removeHandler(handler)
    assert capsys.readouterr().err.count("only once") == 1
    assert "only once" not in stream.getvalue()


# ---------------------------------------------------------------------------------------------- adapter files


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, n_up=2))
    return mlv.save_adapter(model, tmp_path_factory.mktemp("ad") / "adapter")


@pytest.mark.parametrize("value", [None, "two", [2], 1.5, True])
def test_format_version_that_is_not_a_number_is_named(adapter_dir, tmp_path, value):
    import shutil

    path = shutil.copytree(adapter_dir, tmp_path / "adapter")
    doc = json.loads((path / ADAPTER_CONFIG).read_text())
    doc["format_version"] = value
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    with pytest.raises(AdapterFileError) as err:
        read_adapter_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path / ADAPTER_CONFIG}: format_version is {value!r}") and "whole number" in msg
    doc["format_version"] = "2"  # a string of digits is read as before
    (path / ADAPTER_CONFIG).write_text(json.dumps(doc))
    assert read_adapter_config(path)["format_version"] == "2"


# ---------------------------------------------------------------------------------------------- --device


@pytest.mark.parametrize("device", ["gpu", "mps", "meta", "cuda:-1", ""])
def test_device_that_is_not_cpu_or_cuda_names_the_option(device):
    with pytest.raises(RuntimeError, match=r"--device .*use auto \| cpu \| cuda \| cuda:N"):
        pick_device(device)


def test_cuda_index_beyond_the_devices_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        pick_device("cuda:2")
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"--device cuda:0: under torchrun every rank would use that one GPU"):
        pick_device("cuda:0", local_rank=1, local_world_size=2)
    assert pick_device("cuda", local_rank=1, local_world_size=2) == torch.device("cuda", 1)
    assert pick_device("cuda:1", local_rank=0, local_world_size=1) == torch.device("cuda", 1)  # one process per node
    # A launcher that gives each process one GPU (CUDA_VISIBLE_DEVICES) while LOCAL_RANK counts on: cuda:3 was
    # taken and failed with CUDA's "invalid device ordinal"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert pick_device("auto", local_rank=3, local_world_size=4) == pick_device("cuda", local_rank=3) \
        == torch.device("cuda", 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")   # two processes on a machine's one GPU: not both on cuda:0
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK 1 has no GPU of its own: this process sees 1 CUDA devices"):
        pick_device("auto", local_rank=1, local_world_size=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK 3 has no GPU of its own: this process sees 2 CUDA devices"):
        pick_device("auto", local_rank=3, local_world_size=4)


def test_a_gpu_that_only_emulates_bf16_gets_fp16(monkeypatch):
    """A V100/T4 (compute capability 7.x) 'supports' bf16 only by emulation: auto picks fp16 there, bf16 on an
    A100, and asks the device it was given, not the current one."""
    from mtl_lora_vl.backbones.base import resolve_base_dtype
    from mtl_lora_vl.precision import resolve_precision

    class _Dev:   # torch.cuda.device(d) without a GPU: records which device was asked
        def __init__(self, d):
            asked.append(d)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    asked: list = []
    native = {"v100": False, "a100": True}
    for gpu, want in (("v100", torch.float16), ("a100", torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "device", _Dev)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, g=gpu:
                            including_emulation or native[g])
        cuda1 = torch.device("cuda", 1)
        assert resolve_base_dtype("auto", cuda1) == want
        assert resolve_precision("auto", cuda1) == (torch.bfloat16 if native[gpu] else torch.float32)
    assert asked and all(torch.device(d) == torch.device("cuda", 1) for d in asked)


def test_explicit_bf16_on_a_gpu_that_only_emulates_it_is_warned_about(monkeypatch):
    """--precision bf16 on a V100 / T4 ran every step in emulated bf16 (slowly) without a word; auto avoided it."""
    import contextlib

    from mtl_lora_vl.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla V100")
    for native in (False, True):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native:
                            including_emulation or n)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert resolve_precision("bf16", torch.device("cuda", 0)) == torch.bfloat16
        said = [str(w.message) for w in seen]
        assert bool(said) != native
        assert native or "Tesla V100" in said[0] and "only emulates bf16" in said[0] and "--precision fp16" in said[0]


def test_a_cpu_run_on_a_gpu_machine_does_not_pin_memory(monkeypatch):
    from PIL import Image

    from mtl_lora_vl.backbones import load_backbone
    from mtl_lora_vl.data.loader import iter_image_batches
    from mtl_lora_vl.data.records import Example

    pinned = []
    real = torch.utils.data.DataLoader.__init__

    def spy(self, *a, **k):
        pinned.append(k.get("pin_memory", False))
        real(self, *a, **{**k, "pin_memory": False})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", spy)
    examples = [Example(image=Image.new("RGB", (8, 8)), image_id="a")]
    list(iter_image_batches(load_backbone("builtin"), examples, batch_size=1, device="cpu"))
    assert pinned == [False]


# ---------------------------------------------------------------------------------------------- export


def test_export_of_several_tasks_checks_every_target_before_writing(trained_run, tmp_path, capsys):  # noqa: F811
    path = trained_run[0]
    out = tmp_path / "loras"
    (out / "retrieval").mkdir(parents=True)
    (out / "retrieval" / "keep.txt").write_text("old")
    argv = ["export", "--adapter", str(path), "--task", "vqa,retrieval", "--format", "plain", "--out", str(out)]
    assert main(argv, prog="mtl-lora-vl") == 2
    assert not (out / "vqa").exists()  # nothing written
    err = capsys.readouterr().err
    assert f"--out {out / 'retrieval'}: is not empty and holds no mtl_lora_export.json" in err
    assert (out / "retrieval" / "keep.txt").read_text() == "old"
    assert main(["export", "--adapter", str(path), "--task", "vqa,vqa", "--out", str(tmp_path / "m")],
                prog="mtl-lora-vl") == 2
    assert "'vqa' given more than once" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main([*argv, "--overwrite"], prog="mtl-lora-vl") == 2   # a folder of other files: not replaced
    assert (out / "retrieval" / "keep.txt").read_text() == "old" and not (out / "vqa").exists()
    (out / "retrieval" / "mtl_lora_export.json").write_text("{}")   # an earlier export: replaced
    assert main([*argv, "--overwrite"], prog="mtl-lora-vl") == 0
    assert (out / "vqa").is_dir() and not (out / "retrieval" / "keep.txt").exists()


# ---------------------------------------------------------------------------------------------- bench


def test_bench_help_names_the_real_program(capsys):
    assert main(["bench", "--help"], prog="mtl-lora-vl") == 0
    assert capsys.readouterr().out.startswith("usage: mtl-lora-vl bench ")


def test_a_missing_pretrained_file_for_the_built_in_backbone_is_named():
    from mtl_lora_vl.backbones import load_backbone

    with pytest.raises(FileNotFoundError, match=r"pretrained='/nonexistent/w.bin': no such file"):
        load_backbone("builtin", pretrained="/nonexistent/w.bin")


# ------------------------------------------------------------------ helper 143: files the user writes

_BUILTIN_DATA = '[data]\nsource = "builtin"\n'


def test_task_names_differing_only_in_case_are_refused(tmp_path):
    """An adapter stores tasks/<name>.toml and tasks/<name>.state.json: 'VQA' and 'vqa' are one file on macOS and
    Windows, so one task's spec and vocabulary overwrote the other's; both names were accepted."""
    from mtl_lora_vl.tasks.spec import resolve_tasks

    spec = tmp_path / "a.toml"
    spec.write_text(f'name = "VQA"\nkind = "vqa"\n{_BUILTIN_DATA}')
    with pytest.raises(SpecError, match=r"task names 'vqa' and 'VQA' differ only in case|'VQA' and 'vqa' differ"):
        resolve_tasks(["vqa", str(spec)])
    with pytest.warns(UserWarning, match=r"tasks \['VQA', 'vqa'\] differ only in case"):   # an old adapter loads
        mlv.MTLLoRAConfig(tasks=["vqa", "VQA"])
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=["vqa"], r=2))
    with pytest.raises(ValueError, match="already has a task 'VQA'"):
        mlv.add_task(model, "VQA")


@pytest.mark.parametrize(("kind", "world_kind"), [("classification", "vqa"), ("classification", "captioning"),
                                                  ("vqa", "retrieval"), ("retrieval", "vqa")])
def test_a_world_kind_the_task_kind_cannot_use_is_refused_when_the_spec_is_read(tmp_path, kind, world_kind):
    """classification on world_kind = "vqa" was told at build to give options.class_names, and following that
    failed next on labels (None); retrieval on vqa rows trained on questions as captions."""
    spec = tmp_path / "t.toml"
    spec.write_text(f'kind = "{kind}"\ntemplates = ["{{}}."]\n{_BUILTIN_DATA}world_kind = "{world_kind}"\n')
    with pytest.raises(SpecError, match=r"field 'data.world_kind': expected one of"):
        load_spec(spec)


def test_a_world_split_too_large_to_draw_is_refused(tmp_path):
    """n = 10000000000000 was accepted, and reading the split drew scenes for ever without a word."""
    spec = tmp_path / "t.toml"
    spec.write_text(f'kind = "vqa"\n{_BUILTIN_DATA}[data.train]\nn = 10000000000000\n')
    with pytest.raises(SpecError, match=r"field 'data.train.n': expected a positive integer up to 1,000,000"):
        load_spec(spec)


def test_a_json_config_giving_an_option_twice_is_refused(tmp_path, capsys):
    """TOML refuses a key given twice; json kept the last ({"steps": 1, "steps": 500} trained 500 steps)."""
    from mtl_lora_vl.cli.commands import parse_train_args
    from mtl_lora_vl.config import ConfigError

    cfg = tmp_path / "c.json"
    cfg.write_text('{"steps": 1, "steps": 500}')
    with pytest.raises(SystemExit):
        parse_train_args(["--config", str(cfg)])
    assert "'steps' is given twice" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="'r' is given twice"):
        mlv.MTLLoRAConfig.from_json('{"tasks": ["a"], "r": 4, "r": 8}')


@pytest.mark.parametrize("name", ["con", "NUL", "Com1", "lpt9", "aux", "com0"])
def test_task_names_windows_reserves_are_refused_before_training(tmp_path, name):
    """A task named 'con' trained on Linux, then the adapter could not be copied to Windows (tasks/con.toml is the
    console there); save_adapter and the spec refuse it up front, naming the rule and the fix."""
    spec = tmp_path / "a.toml"
    spec.write_text(f'name = "{name}"\nkind = "vqa"\n{_BUILTIN_DATA}')
    with pytest.raises(SpecError, match=rf"'name'.*device name Windows reserves.*rename the task.*{name!r}"):
        load_spec(str(spec))
    model = mlv.attach(tiny_open_clip(), mlv.MTLLoRAConfig(tasks=[name, "console"], r=2))
    ok = tmp_path / "ok.toml"
    ok.write_text(f'name = "console"\nkind = "vqa"\n{_BUILTIN_DATA}')
    with pytest.raises(ValueError, match=rf"task name {name!r} names a device Windows reserves"):
        mlv.save_adapter(model, tmp_path / "out", task_specs={name: spec, "console": ok})
    assert not (tmp_path / "out").exists()


def test_a_misspelt_top_level_spec_field_names_the_likely_one(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text(f'kind = "vqa"\ntemplate = ["the answer is {{}}."]\n{_BUILTIN_DATA}')
    with pytest.raises(SpecError, match=r"did you mean 'templates'\?"):
        load_spec(spec)


def test_a_rank_above_the_targets_widths_is_named():
    """r = 10**9 on the built-in backbone ended in the allocator's "can't allocate 512000000000 bytes", with nothing
    naming the option (helper 143); r above a layer's min(input, output width) cannot add rank."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Linear(64, 64))
    with pytest.warns(UserWarning, match=r"r = 8 \(--rank\) is above min\(input, output width\) of 1 of 2 targets "
                                         r"\(e.g. '0': 4\)"):
        mlv.attach(net, mlv.MTLLoRAConfig(tasks=["a"], r=8, targets={"image": [r"^\d$"]}))
