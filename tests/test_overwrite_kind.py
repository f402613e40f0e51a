"""``train --overwrite`` replaces a training run directory only: a folder whose config.json is some other program's
(a Hugging Face model, a merged export) was taken for a run and deleted (review 207)."""
import json

from mtl_lora_vl.cli import train_main
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.rundir import choose_run_dir, config_doc


def test_overwrite_refuses_a_model_folder_with_a_config_json(tmp_path, capsys):
    model = tmp_path / "llava-hf"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["Llava"]}))
    (model / "model.safetensors").write_bytes(b"weights")
    assert train_main(["--out", str(model), "--overwrite", "--steps", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "config.json is not a training run's" in err and "choose another --out" in err, err
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]


def test_overwrite_still_replaces_a_run_that_wrote_only_its_config(tmp_path):
    run = tmp_path / "run"   # a run killed before its first checkpoint holds config.json alone
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config_doc(run, TrainOptions(out=str(run)))))
    assert choose_run_dir(TrainOptions(out=str(run), overwrite=True)) == run
