"""`mtl-lora-vl -v train ...` was refused as "unrecognized arguments: -v": the command's options go after it
(review 207)."""
from mtl_lora_vl.cli import main


def test_an_option_before_the_command_is_told_where_it_goes(capsys):
    assert main(["-v", "--steps", "3", "train", "--tasks", "vqa"], prog="mtl-lora-vl") == 2
    err = capsys.readouterr().err
    assert "-v --steps 3: options go after the command: mtl-lora-vl train -v --steps 3 ..." in err, err
    assert main(["--version"], prog="mtl-lora-vl") == 0
    assert main(["train", "--steps", "0"], prog="mtl-lora-vl") == 2
    assert "--steps: must be >= 1" in capsys.readouterr().err
