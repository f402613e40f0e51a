"""A --data-root that no task reads is refused: built-in tasks are made by the built-in world, so `train --tasks vqa
--data-root /data/vqav2` trained and scored the world's VQA without a word (review 207)."""
from mtl_lora_vl.cli import eval_main, train_main


def test_train_refuses_a_data_root_only_built_in_tasks_would_ignore(tmp_path, capsys):
    data = tmp_path / "vqav2"
    data.mkdir()
    out = tmp_path / "run"
    assert train_main(["--tasks", "vqa", "--data-root", str(data), "--steps", "1", "--device", "cpu",
                       "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--data-root {data}: no task of --tasks reads files (vqa are built-in tasks" in err, err
    assert not out.exists()


def test_eval_without_an_adapter_refuses_it_too(tmp_path, capsys):
    out = tmp_path / "zs"
    assert eval_main(["--tasks", "vqa,retrieval", "--data-root", str(tmp_path), "--out", str(out)]) == 2
    assert "no task of --tasks reads files (vqa, retrieval are built-in tasks" in capsys.readouterr().err
    assert not out.exists()
