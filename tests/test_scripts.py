"""The small scripts without a test file of their own: ``show_world.py`` (the README's sample grid) and
``bench_generation.py`` (CoCa decoding with and without the cache), ``check_gpu.py`` (the GPU session's checks)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_show_world_draws_every_task_kind(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "grid.png"
    assert _script("show_world").main(["--out", str(out), "--per-row", "1", "--size", "16", "--dpi", "10"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and "wrote" in capsys.readouterr().out
    rows = _script("show_world")._panels(2, seed=0)
    assert [title.split()[0] for title, _ in rows] == ["pretrain", "retrieval", "vqa", "classification", "nlvr"]
    assert _script("show_world")._picture(rows[-1][1][0][0], 16).shape == (16, 2 * 16 + 2, 3)   # a pair, side by side
    assert all(len(panels) == 2 and all(text for _, text in panels) for _, panels in rows)


def test_show_world_refuses_a_path_that_is_not_a_png_and_keeps_the_old_image_when_drawing_fails(tmp_path,
                                                                                                 monkeypatch):
    pytest.importorskip("matplotlib")
    show_world = _script("show_world")
    for bad in (tmp_path / "grid.jpg", tmp_path):
        with pytest.raises(SystemExit):
            show_world.main(["--out", str(bad)])
    out = tmp_path / "grid.png"
    out.write_bytes(PNG_MAGIC + b"old")
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"half")   # a partial write, then the failure
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(KeyboardInterrupt):
        show_world.main(["--out", str(out), "--per-row", "1", "--size", "16", "--dpi", "10", "--overwrite"])
    assert out.read_bytes() == PNG_MAGIC + b"old" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_bench_generation_cached_and_uncached_decoding_agree(capsys):
    assert _script("bench_generation").main(["--images", "2", "--max-len", "2", "--repeats", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "3"]                        # greedy and 3 beams
    assert all(r[-1] == "True" and float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


def test_bench_generation_counts_token_ids_not_text(monkeypatch, capsys):
    """Differing outputs are reported as different even where they decode to the same text (ids past the
    word tokenizer's vocabulary all read ``<unk>``)."""
    bench = _script("bench_generation")
    real = bench.build

    def build(device):
        bb = real(device)
        plain = bb.generate

        def generate(images, *, use_cache, **kwargs):
            out = plain(images, use_cache=use_cache, **kwargs)
            return [row[:-1] + (row[-1] + 1,) if use_cache else row for row in out]   # the cache path differs

        bb.generate = generate
        return bb

    monkeypatch.setattr(bench, "build", build)
    bench.main(["--images", "2", "--max-len", "2", "--repeats", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [r[-1] for r in rows] == ["False", "False"]


def test_bench_generation_refuses_counts_below_one(capsys):
    for flag in ("--images", "--max-len", "--repeats", "--threads"):
        with pytest.raises(SystemExit):
            _script("bench_generation").main([flag, "0"])
    with pytest.raises(SystemExit):   # was torch's traceback from inside model.to() (helper 142)
        _script("bench_generation").main(["--device", "foo"])
    assert "--device 'foo': not a device this package runs on" in capsys.readouterr().err


def test_check_gpu_runs_its_checks_on_the_cpu_and_fails_a_wrong_route(tmp_path, monkeypatch, capsys):
    """scripts/check_gpu.py (the GPU session's checks) with --device cpu: the checks pass, and one that a
    route given per row no longer steers (every row runs the first row's task) fails."""
    check_gpu = _script("check_gpu")
    only = "llava_generate_fp32,llava_merged_fp32,llava_mixed_loss_fp32,clip_mixed_route_fp32"
    with pytest.raises(SystemExit):   # a place no file can be written: refused before the checks (helper 142)
        check_gpu.main(["--device", "cpu", "--only", only, "--json", "/proc/checks.json"])
    assert "--json /proc/checks.json: cannot write there" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # refused as parsed, before the --json check: it leaves no folder behind
        check_gpu.main(["--device", "cpu", "--only", "nope", "--json", str(tmp_path / "new" / "checks.json")])
    assert not (tmp_path / "new").exists()
    out = tmp_path / "new" / "checks.json"   # a missing folder is made when the file is written
    assert check_gpu.main(["--device", "cpu", "--only", only, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [k for k in res if k != "device"] == only.split(",") and all(r["passed"] for r in res.values())
    assert res["llava_merged_fp32"]["max_abs_loss_diff"] < 1e-2 < res["llava_merged_fp32"]["task_gap"] / 10
    assert 0 < res["clip_mixed_route_fp32"]["text_cut_max_abs_diff"] < 1e-5   # text at its own width, routed
    route = check_gpu.mlv.route
    monkeypatch.setattr(check_gpu.mlv, "route",
                        lambda model, ids: route(model, ids[0] if isinstance(ids, list) else ids))
    assert check_gpu.main(["--device", "cpu", "--only", "llava_mixed_loss_fp32,clip_mixed_route_fp32"]) == 1
    assert capsys.readouterr().out.count("FAIL") == 2


def test_check_gpu_reads_the_peak_memory_of_the_device_it_checks(monkeypatch):
    """``--device cuda:1``: peak memory is cuda:1's, not the current device's (cuda:0 unless set)."""
    import torch

    check_gpu = _script("check_gpu")
    asked = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: asked.append(device) or 2**21)
    assert check_gpu.peak_mb("cuda:1") == 2.0 and asked == [torch.device("cuda:1")]
    assert check_gpu.peak_mb("cpu") is None and len(asked) == 1


def test_every_script_puts_the_checkout_on_sys_path_before_importing_the_package():
    """Scripts run from a checkout without installing (check_gpu.sh runs check_gpu.py on a fresh GPU machine);
    four of them imported mtl_lora_vl first and failed there with ModuleNotFoundError (helper 147)."""
    late = []
    for script in sorted((REPO / "scripts").glob("*.py")):
        lines = script.read_text().splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith(("import mtl_lora_vl", "from mtl_lora_vl"))),
                     None)
        if first is not None and not any(line.lstrip().startswith("sys.path.insert(0, str(") for line in lines[:first]):
            late.append(script.name)
    assert late == []


# ------------------------------------------------------------------ the asset scripts (helper 147)

class _WouldTrain(Exception):
    """Raised where an asset script starts its minutes of work: the options were accepted."""


def _no_training(monkeypatch, mod):
    def refuse(*args, **kwargs):
        raise _WouldTrain
    monkeypatch.setattr(mod.world, "build_split", refuse)


def test_pretrain_backbone_never_replaces_a_users_open_clip_folder(tmp_path, monkeypatch):
    """Every open_clip model folder (and an export of a CLIP base) holds open_clip_config.json, which alone made a
    folder "an earlier output of this script": --out replaced it whole, the user's weights and notes with it."""
    pb = _script("pretrain_backbone")
    _no_training(monkeypatch, pb)
    user = tmp_path / "my_model"
    user.mkdir()
    (user / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    (user / "NOTES.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        pb.main(["--steps", "1", "--out", str(user)])
    assert e.value.code == 2 and (user / "NOTES.txt").read_text() == "mine"


def test_pretrain_backbone_records_every_setting_that_changes_its_asset(tmp_path, monkeypatch):
    """The asset's "pretrain" record left out --weight-decay: two assets trained otherwise carried the same record
    (review 195). One step on 8 scenes, the zero-shot scoring skipped, the vocabulary of those scenes' captions
    alone (the whole world's texts took most of the time)."""
    pb = _script("pretrain_backbone")
    monkeypatch.setattr(pb, "zero_shot_report", lambda bb, seed, log=print: {})
    monkeypatch.setattr(pb.world, "all_texts", lambda seed: [])
    out = tmp_path / "clip"
    assert pb.main(["--steps", "1", "--n-pretrain", "8", "--batch-size", "4", "--weight-decay", "0.3",
                    "--out", str(out)]) == 0
    record = json.loads((out / "open_clip_config.json").read_text())["pretrain"]
    assert record["weight_decay"] == 0.3 and record["threads"] is None
    # the committed asset, written before the record held them, has every setting the script records now
    asset = json.loads((REPO / "assets" / "builtin_clip" / "open_clip_config.json").read_text())["pretrain"]
    assert sorted(set(record) - set(asset)) == []


def test_pretrain_llava_evaluate_leaves_a_foreign_folder_unmarked_and_out_never_replaces_it(tmp_path, monkeypatch,
                                                                                            capsys):
    """--evaluate DIR wrote DIR/pretrain.json into any LLaVA folder, after which --out DIR took it for an earlier
    asset and deleted everything in it."""
    import shutil

    pl = _script("pretrain_llava")
    user = tmp_path / "llava"
    shutil.copytree(REPO / "assets" / "builtin_llava", user)
    (user / "pretrain.json").unlink()          # a LLaVA folder this script did not write
    (user / "NOTES.txt").write_text("mine")
    monkeypatch.setattr(pl, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr(pl, "print_report", lambda *a, **k: None)
    assert pl.main(["--evaluate", str(user), "--eval-scenes", "1"]) == 0
    assert not (user / "pretrain.json").exists() and "not stored" in capsys.readouterr().out
    (user / "pretrain.json").write_text("{}")   # a marker file without what the script writes in it
    _no_training(monkeypatch, pl)
    with pytest.raises(SystemExit) as e:
        pl.main(["--steps", "1", "--out", str(user)])
    assert e.value.code == 2 and (user / "NOTES.txt").read_text() == "mine"


@pytest.mark.parametrize(("script", "args"), [
    ("pretrain_backbone", ["--lr", "inf"]),               # trained to NaN and wrote a NaN asset
    ("pretrain_backbone", ["--n-pretrain", "1"]),   # a batch of one pair: loss and gradients 0, an untrained asset
    ("pretrain_llava", ["--lr", "inf"]),
    ("pretrain_llava", ["--hidden", "6", "--heads", "2"]),   # head size 3: rotary embeddings failed after set-up
    ("pretrain_llava", ["--eval-every", "-5"]),
])
def test_asset_script_options_that_fail_later_are_refused_first(script, args, tmp_path, monkeypatch):
    mod = _script(script)
    _no_training(monkeypatch, mod)
    with pytest.raises(SystemExit) as e:
        mod.main([*args, "--out", str(tmp_path / "out")])
    assert e.value.code == 2


def test_check_gpu_names_a_bad_device_once(capsys):
    """--device foo printed a traceback per check and exited 1."""
    with pytest.raises(SystemExit) as e:
        _script("check_gpu").main(["--device", "foo", "--only", "clip_mixed_route_fp32"])
    assert e.value.code == 2 and "--device 'foo': not a device" in capsys.readouterr().err


def test_show_world_does_not_replace_a_users_png(tmp_path, capsys):
    photo = tmp_path / "holiday.png"
    photo.write_bytes(b"\x89PNG my picture")
    with pytest.raises(SystemExit) as e:
        _script("show_world").main(["--out", str(photo), "--per-row", "1"])
    assert e.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert photo.read_bytes() == b"\x89PNG my picture"


def test_pretrain_backbone_evaluate_rescores_its_own_asset_and_only_prints_for_a_foreign_folder(tmp_path, monkeypatch,
                                                                                               capsys):
    """--evaluate DIR scores a saved backbone as users load it and refreshes the zero-shot scores its pretraining
    recorded (they went stale as the world's val splits changed: 1204 captions recorded, 1216 now); a folder this
    script did not write is only scored (a 'pretrain' record would let --out replace it)."""
    import shutil

    pb = _script("pretrain_backbone")
    scored = {"retrieval": {"r@1": 0.5}, "classification": {"accuracy": 0.25}}
    seen = []
    monkeypatch.setattr(pb, "zero_shot_report", lambda bb, seed: seen.append((bb.name, seed)) or scored)
    own = tmp_path / "own"
    shutil.copytree(REPO / "assets" / "builtin_clip", own)
    doc = json.loads((own / "open_clip_config.json").read_text())
    doc["pretrain"]["seed"] = 3   # a backbone pretrained with --seed 3: scored on seed 3's val splits
    (own / "open_clip_config.json").write_text(json.dumps(doc))
    before = json.loads((own / "open_clip_config.json").read_text())
    assert pb.main(["--evaluate", str(own)]) == 0
    after = json.loads((own / "open_clip_config.json").read_text())
    assert [s for _, s in seen] == [3]
    assert after["pretrain"]["zero_shot_val"] == scored
    assert {**after, "pretrain": {**after["pretrain"], "zero_shot_val": None}} == \
        {**before, "pretrain": {**before["pretrain"], "zero_shot_val": None}}
    after["pretrain"]["zero_shot_val"] = "kept"
    (own / "open_clip_config.json").write_text(json.dumps(after))
    assert pb.main(["--evaluate", str(own), "--seed", "0"]) == 0   # another seed's val splits: printed only
    assert json.loads((own / "open_clip_config.json").read_text())["pretrain"]["zero_shot_val"] == "kept"
    assert "not stored" in capsys.readouterr().out
    foreign = tmp_path / "foreign"
    shutil.copytree(REPO / "assets" / "builtin_clip", foreign)
    doc = json.loads((foreign / "open_clip_config.json").read_text())
    doc.pop("pretrain")
    (foreign / "open_clip_config.json").write_text(json.dumps(doc))
    assert pb.main(["--evaluate", str(foreign)]) == 0
    assert "not stored" in capsys.readouterr().out
    assert "pretrain" not in json.loads((foreign / "open_clip_config.json").read_text())
    for bad in (["--evaluate", str(own), "--steps", "5"], ["--evaluate", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            pb.main(bad)
        assert e.value.code == 2


def test_pretrain_llava_clip_dir_gives_the_vision_tower_its_shape_and_refuses_one_it_cannot_build(tmp_path,
                                                                                                  monkeypatch):
    """--clip DIR starts the LLaVA from a CLIP other than the committed one (one rebuilt by pretrain_backbone.py
    --out DIR, without overwriting the asset); its tower's width and layers come from its config, and a tower of
    other images, patches or heads, or a folder without a CLIP, is refused before any work."""
    import shutil

    pl = _script("pretrain_llava")
    assert pl.clip_vision_size(REPO / "assets" / "builtin_clip") == (128, 4)
    clip = tmp_path / "clip"
    shutil.copytree(REPO / "assets" / "builtin_clip", clip)
    cfg = json.loads((clip / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"]["layers"] = 2
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    assert pl.clip_vision_size(clip) == (128, 2)
    _no_training(monkeypatch, pl)
    with pytest.raises(_WouldTrain):   # accepted: it goes on to build the world
        pl.main(["--clip", str(clip), "--out", str(tmp_path / "out")])
    cfg["model_cfg"]["vision_cfg"]["patch_size"] = 16
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    for bad in (clip, tmp_path / "nothing"):
        with pytest.raises(SystemExit) as e:
            pl.main(["--clip", str(bad), "--out", str(tmp_path / "out")])
        assert e.value.code == 2


def test_pretrain_llava_evaluate_scores_the_seed_it_was_trained_with(tmp_path, monkeypatch, capsys):
    """--evaluate DIR without --seed scored seed 0's val splits and stored them under the folder's own seed; now it
    scores the recorded seed's, and another --seed's scores are printed, not stored."""
    import shutil

    pl = _script("pretrain_llava")
    model = tmp_path / "llava"
    shutil.copytree(REPO / "assets" / "builtin_llava", model)
    meta = json.loads((model / "pretrain.json").read_text())
    meta["settings"]["seed"] = 4
    (model / "pretrain.json").write_text(json.dumps(meta))
    seeds = []
    monkeypatch.setattr(pl, "evaluate", lambda m, p, seed, n: seeds.append(seed) or {"vqa": {"accuracy": 0.5}})
    monkeypatch.setattr(pl, "print_report", lambda *a, **k: None)
    assert pl.main(["--evaluate", str(model), "--eval-scenes", "1"]) == 0
    assert (seeds == [4]
            and json.loads((model / "pretrain.json").read_text())["zero_shot_val"] == {"vqa": {"accuracy": 0.5}})
    assert pl.main(["--evaluate", str(model), "--seed", "0", "--eval-scenes", "1"]) == 0
    assert seeds == [4, 0] and "not stored" in capsys.readouterr().out


def test_check_gpu_compares_the_cpu_with_the_same_adapted_model():
    """The CPU copy of check_generate was a second build, whose adapters attach drew anew (A and w random): it
    compared another model's tokens (0 of 6 rows equal even on one device; the H200 run's "0 of 6" was that)."""
    check_gpu = _script("check_gpu")
    out = check_gpu.check_generate("cpu", "fp32", compare_cpu=True)
    assert out["passed"] and out["cpu_rows_equal_greedy"] == 6


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_pretrain_backbone_evaluate_refuses_threads_below_one(threads, tmp_path, monkeypatch, capsys):
    """--evaluate DIR --threads -1 ended in torch's RuntimeError from set_num_threads, and --threads 0 was taken
    silently, where a training run refuses both."""
    import shutil

    pb = _script("pretrain_backbone")
    monkeypatch.setattr(pb, "zero_shot_report", lambda bb, seed: {})
    own = tmp_path / "own"
    shutil.copytree(REPO / "assets" / "builtin_clip", own)
    with pytest.raises(SystemExit) as e:
        pb.main(["--evaluate", str(own), "--threads", threads])
    assert e.value.code == 2 and f"--threads must be >= 1, got {threads}" in capsys.readouterr().err


def test_check_gpu_json_replaces_only_its_own_earlier_results_and_says_so(tmp_path, capsys):
    """--json replaced any file silently (a task spec, a README) once every check had run; now a file that is not
    an earlier result is refused before the checks, and an earlier result is replaced with a line saying so."""
    check_gpu = _script("check_gpu")
    # (a check that fails the test if it runs: ``--only nope`` stopped here before, and is refused as parsed now)
    check_gpu.CHECKS["llava_generate_bf16"] = lambda device: pytest.fail("a check ran before --json was refused")
    for name, text in (("notes.json", '{"mine": 1}'), ("vqa.toml", 'kind = "vqa"\n')):
        user = tmp_path / name
        user.write_text(text)
        with pytest.raises(SystemExit) as e:
            check_gpu.main(["--device", "cpu", "--only", "llava_generate_bf16", "--json", str(user)])
        assert e.value.code == 2 and "is not an earlier result of this script" in capsys.readouterr().err
        assert user.read_text() == text
    out = tmp_path / "checks.json"
    out.write_text(json.dumps({"device": {"name": "cpu"}, "old_check": {"passed": False}}))
    assert check_gpu.main(["--device", "cpu", "--only", "clip_mixed_route_fp32", "--json", str(out)]) == 0
    assert "holds earlier results; this run replaces them" in capsys.readouterr().out
    assert "old_check" not in json.loads(out.read_text())


def test_check_gpu_sh_dry_run_benches_a_small_clip_within_cpu_time_limits(tmp_path):
    """QUICK=1 DEVICE=cpu (the dry run) benched ViT-B-32 within the GPU's 120 s: 102 s on two CPU cores, killed
    under load, as were the fp16 step (CPU fp16: 18 s a step) and the pairs step. Each step's command and limit are
    read from a stand-in ``timeout`` that runs nothing."""
    import os
    import subprocess

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text('#!/bin/sh\nshift\necho "$*" >> "$CALLS"\n')   # drops --kill-after=10
    (bin_dir / "timeout").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(log), "QUICK": "1", "DEVICE": "cpu",
           "OUT": str(tmp_path / "out"), "PY": "true"}
    subprocess.run(["bash", str(REPO / "scripts" / "check_gpu.sh")], cwd=REPO, env=env, check=True, timeout=60,
                   capture_output=True)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) == 13 and all(int(c[0]) >= 360 for c in calls)   # the GPU's limits (90 s and up) x 4
    clip = [c for c in calls if "--case" in c and c[c.index("--case") + 1] == "clip"]
    assert len(clip) == 3 and all(c[c.index("--model") + 1] == "ViT-S-32" for c in clip)


def test_check_gpu_sh_keeps_within_its_time_budget(tmp_path):
    """All of check_gpu.sh's steps take ~12-14 minutes on an H100 and a device call ends at 600 s: the call was
    killed mid-step, losing that step's figures and every later one, and steps.txt never said what had not run. Under
    BUDGET a step's limit is cut to the seconds left and a step with less than half its limit left is skipped, named
    in steps.txt with the ONLY= that runs it next."""
    import os
    import subprocess

    bin_dir, log, out = tmp_path / "bin", tmp_path / "calls.txt", tmp_path / "out"
    bin_dir.mkdir()
    (bin_dir / "timeout").write_text('#!/bin/sh\nshift\necho "$*" >> "$CALLS"\n')   # drops --kill-after=10
    (bin_dir / "timeout").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(log), "OUT": str(out), "PY": "true",
           "BUDGET": "110"}
    for key in ("QUICK", "ONLY", "LIMIT_SCALE"):
        env.pop(key, None)
    run = subprocess.run(["bash", str(REPO / "scripts" / "check_gpu.sh")], cwd=REPO, env=env, check=True, timeout=60,
                         capture_output=True, text=True)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) == 11 and all(100 <= int(c[0]) <= 110 for c in calls if int(c[0]) != 90)   # cut to the budget
    steps = (out / "steps.txt").read_text()
    assert "bench_clip_compiled skipped" in steps and "compile skipped" in steps
    assert "ONLY=bench_clip_compiled,compile bash scripts/check_gpu.sh" in steps.splitlines()[-1]
    assert "ONLY=bench_clip_compiled,compile" in run.stdout


@pytest.mark.parametrize("name", ["bench_adapters", "bench_generation", "bench_image_check", "check_gpu",
                                  "pretrain_backbone", "pretrain_llava", "show_world"])
def test_every_script_option_says_what_it_does(name, monkeypatch):
    """`bench_generation.py --help` listed its five options with no word on any of them. Every option of every
    script has help text (read off the parser just before it parses)."""
    import argparse
    import inspect as inspect_

    seen = []

    def inspect(self, *args, **kwargs):
        seen.extend(a for a in self._actions if a.option_strings and not a.help)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", inspect)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", inspect)
    monkeypatch.setattr("sys.argv", [name])
    main = _script(name).main
    with pytest.raises(SystemExit):
        main([]) if inspect_.signature(main).parameters else main()
    assert not [a.option_strings for a in seen]


@pytest.mark.parametrize("script, asset", [("pretrain_backbone", "builtin_clip"), ("pretrain_llava", "builtin_llava")])
def test_asset_scripts_never_delete_what_a_user_put_in_an_earlier_output(script, asset, tmp_path, monkeypatch, capsys):
    """--out DIR, an earlier output of the script, was replaced whole: a LLaVA built into DIR/llava from that CLIP
    (pretrain_llava --clip DIR --out DIR/llava) and a NOTES.txt were deleted without a word. Now such a folder is
    refused before any work, naming what it holds; an earlier output holding only the script's files still goes."""
    import shutil

    mod = _script(script)
    _no_training(monkeypatch, mod)
    out = tmp_path / "out"
    shutil.copytree(REPO / "assets" / asset, out)
    with pytest.raises(_WouldTrain):   # accepted: it goes on to build the world
        mod.main(["--steps", "1", "--out", str(out)])
    (out / "llava").mkdir()
    (out / "llava" / "config.json").write_text("{}")
    (out / "NOTES.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        mod.main(["--steps", "1", "--out", str(out)])
    assert e.value.code == 2 and "NOTES.txt, llava" in capsys.readouterr().err
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "llava" / "config.json").is_file()


def test_show_world_refuses_an_out_it_cannot_write_before_drawing(tmp_path, monkeypatch, capsys):
    """--out under a file (or in a folder it cannot write) drew the whole grid, then ended in a traceback."""
    show_world = _script("show_world")
    monkeypatch.setattr(show_world, "_panels", lambda *a: pytest.fail("drew before checking --out"))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        show_world.main(["--out", str(tmp_path / "notes.txt" / "x.png")])
    assert e.value.code == 2 and "notes.txt is a file" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder nothing can be made in")
@pytest.mark.parametrize("script", ["pretrain_backbone", "pretrain_llava"])
def test_asset_scripts_refuse_an_out_they_cannot_write_before_training(script, monkeypatch, capsys):
    """--out /proc/clip passed every check, trained (25 minutes for the default CLIP) and failed at the save with
    a FileNotFoundError traceback; now a usage error before any work."""
    mod = _script(script)
    _no_training(monkeypatch, mod)
    with pytest.raises(SystemExit) as e:
        mod.main(["--steps", "1", "--out", "/proc/mtl-lora-vl-out"])
    assert e.value.code == 2 and "cannot write there" in capsys.readouterr().err


@pytest.mark.parametrize(("script", "args", "want"), [
    ("pretrain_backbone", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("pretrain_backbone", ["--batch-size", "1"], "--batch-size must be >= 2 (a contrastive batch needs two pairs), "
                                                 "got 1"),
    ("pretrain_llava", ["--steps", "-3"], "--steps must be >= 1, got -3"),
    ("pretrain_llava", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("pretrain_llava", ["--turns", "0"], "--turns must be >= 1, got 0"),
    ("pretrain_llava", ["--layers", "0"], "--layers must be >= 1, got 0"),
    ("pretrain_llava", ["--intermediate", "-1"], "--intermediate must be >= 1, got -1"),
    ("pretrain_llava", ["--hidden", "6", "--heads", "2"], "--hidden (6) must be a multiple of --heads (2)"),
])
def test_asset_script_refusals_name_the_value_given(script, args, want, tmp_path, monkeypatch, capsys):
    """Before: "--steps must be >= 1 and --batch-size >= 2" (pretrain_backbone), "--steps, --batch-size and --turns
    must be >= 1" (pretrain_llava), without saying which value was wrong or what it was."""
    mod = _script(script)
    _no_training(monkeypatch, mod)
    with pytest.raises(SystemExit) as e:
        mod.main([*args, "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and want in capsys.readouterr().err


def test_bench_adapters_compile_takes_a_backend_or_inductor_and_refuses_an_unknown_one_before_building(capsys):
    """``--compile`` takes an optional BACKEND: alone or before another flag it is inductor. A word that is no
    backend (``--compile cpu``, meant as a device) failed as torch.compile's InvalidBackend traceback once the first
    model was built; it is the parser's error now, before any model (sizes tiny: the old path built one)."""
    bench = _script("bench_adapters")
    parse = bench.build_parser().parse_args
    assert parse(["--compile", "--device", "cpu"]).compile == "inductor"
    assert parse(["--compile"]).compile == "inductor" and parse([]).compile is None
    assert parse(["--compile", "aot_eager", "--repeats", "2"]).compile == "aot_eager"
    assert "BACKEND, a torch.compile backend name" in bench.build_parser().format_help()
    tiny = ["--case", "llava", "--vision-layers", "1", "--vision-width", "64", "--lm-layers", "1", "--lm-width", "64",
            "--vocab", "32", "--text-len", "2", "--batch-size", "3", "--repeats", "1", "--warmup", "1", "--no-peft"]
    with pytest.raises(SystemExit) as e:
        bench.main([*tiny, "--device", "cpu", "--compile", "cpu"])
    assert e.value.code == 2 and "--compile 'cpu': not a torch.compile backend; e.g. inductor" in \
        capsys.readouterr().err
