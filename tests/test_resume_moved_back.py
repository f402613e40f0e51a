"""Helper 455: a resume chain -- an --extend run's old tasks' recorded folder d moved to d2 (a copy: the same files),
the run started with --data-root d2, then d2 moved back to d -- is refused on --resume --data-root d: the checkpoint
records no digest of the old tasks' files, so the same files cannot be told from others (77049cf, 956127d). The
refusal told to "put the new tasks' files in a folder of their own and give that with --data-root", which failed
(their images are under d: 'no usable examples'); it now says to move d to another name and give that, which resumes."""

from __future__ import annotations

import shutil

from test_extend_old_task_state import folder, spec, stateless_adapter

from mtl_lora_vl.cli import train_main


def test_a_data_root_moved_back_to_the_old_tasks_folder_is_refused_with_advice_that_resumes(tmp_path, capsys):
    d = folder(tmp_path / "d", ("red", "blue"), ("red", "blue"))
    adapter, _ = stateless_adapter(tmp_path, d)
    d2 = tmp_path / "d2"
    shutil.copytree(d, d2)   # the moved copy
    (d2 / "shades.jsonl").write_text((d2 / "rows.jsonl").read_text())
    new = spec(tmp_path, "shade", "classification", "shades.jsonl")
    shutil.rmtree(d)
    assert train_main(["--extend", str(adapter), "--tasks", str(new), "--data-root", str(d2), "--steps", "1",
                       "--batch-size", "4", "--device", "cpu", "--workers", "0", "--skip-zero-shot",
                       "--out", str(tmp_path / "ext")]) == 0
    d2.rename(d)   # moved back
    capsys.readouterr()
    assert train_main(["--resume", str(tmp_path / "ext"), "--workers", "0", "--data-root", str(d)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the --data-root {d} given now is that folder, back" in err, err
    assert "move that folder to another name and give that with --data-root" in err, err
    d.rename(tmp_path / "d_data")   # what it says
    assert train_main(["--resume", str(tmp_path / "ext"), "--workers", "0", "--data-root",
                       str(tmp_path / "d_data")]) == 0
