"""Training options: a --seed outside 64 bits, an option the method or sampling does not use, and the non-finite stop
without a checkpoint are each named (they crashed unnamed, did nothing, or pointed at a missing checkpoint)."""
import pytest

import mtl_lora_vl.distributed as distributed
import mtl_lora_vl.evaluation.evaluate as evaluate_module
import mtl_lora_vl.training.train as train_module
from mtl_lora_vl.cli.commands import parse_train_args
from mtl_lora_vl.options import TrainOptions
from mtl_lora_vl.training.step import skip_bad_step


# F1: a seed outside what torch.manual_seed takes failed at start-up with "Overflow when unpacking long long"
@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_seed_out_of_range_is_refused_naming_seed(seed, capsys):
    with pytest.raises(ValueError, match="--seed"):
        TrainOptions(seed=seed).validate()
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--seed", str(seed)], prog="train_vl.py")
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


def test_seed_in_range_still_accepted():
    for seed in (0, -1, 2**63 - 1):
        TrainOptions(seed=seed).validate()


# F2: options the chosen method / sampling does not use were accepted and silently ignored
# (--task-lr-mult already is refused for the same reason: "it would change nothing")
@pytest.mark.parametrize("kw, flag", [
    (dict(method="lora", n_up=5), "--n-up"),
    (dict(method="task_lora", n_up=5), "--n-up"),
    (dict(method="lora", temperature=0.1), "--temperature"),
    (dict(method="multi_lora", temperature=0.1), "--temperature"),
    (dict(method="moe_lora", lambda_type="diagonal"), "--lambda-type"),
    (dict(method="task_lora", lambda_type="none"), "--lambda-type"),
    (dict(sampling="proportional", sampling_temperature=5.0), "--sampling-temperature"),
    (dict(sampling="round_robin", sampling_temperature=5.0), "--sampling-temperature"),
])
def test_option_the_method_ignores_is_refused(kw, flag):
    with pytest.raises(ValueError, match=flag):
        TrainOptions(**kw).validate()


def test_defaults_pass_for_every_method():   # the benchmark builds TrainOptions with the default shape options
    for m in ("mtl_lora", "lora", "task_lora", "multi_lora", "moe_lora"):
        TrainOptions(method=m).validate()
    TrainOptions(method="moe_lora", n_up=4, temperature=1.0).validate()
    TrainOptions(method="multi_lora", n_up=4).validate()


# F3: the non-finite stop says "The last checkpoint ... is in RUN" when the run has none yet
def test_non_finite_stop_does_not_claim_a_missing_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FloatingPointError) as e:
        skip_bad_step(None, 1, 2, 1, tmp_path)
    assert "The last checkpoint" not in str(e.value), str(e.value)


def test_stops_name_the_checkpoint_only_where_there_is_one(tmp_path):
    """The fp16 loss-scale stop too; with a checkpoint both name it."""
    from types import SimpleNamespace

    from mtl_lora_vl.training.step import check_loss_scale

    optim = SimpleNamespace(loss_scale=0.5)
    with pytest.raises(FloatingPointError, match="No checkpoint was saved yet.*--overwrite"):
        check_loss_scale(optim, 3, tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(FloatingPointError, match=f"The last checkpoint is in {tmp_path}"):
        check_loss_scale(optim, 3, tmp_path)
    with pytest.raises(FloatingPointError, match="The last checkpoint \\(it may hold steps skipped"):
        skip_bad_step(None, 1, 2, 1, tmp_path)


def test_resume_after_a_killed_overwrite_names_the_kept_run(tmp_path):
    """An --overwrite killed before its first checkpoint leaves the new run (config.json, no checkpoint) and the old
    run in .OUT.replaced: --resume said "start again with --overwrite", which then named .OUT.replaced (two hops)."""
    from mtl_lora_vl.training.checkpoint import CheckpointError, load_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"start it again with --out .*run --overwrite"):
        load_checkpoint(run)   # a run that stopped before its first checkpoint, no --overwrite involved
    (tmp_path / ".run.replaced").mkdir()
    with pytest.raises(CheckpointError, match=r"an --overwrite of .*run was stopped before its first checkpoint, and "
                                              r"the run it was replacing is kept in .*\.run\.replaced\. "
                                              r"To keep that run"):
        load_checkpoint(run)


@pytest.mark.parametrize("kw, flag", [(dict(batch_size=2.7), "--batch-size"), (dict(rank=8.5), "--rank"),
                                      (dict(steps=10.0), "--steps")])
def test_a_fractional_count_from_python_is_refused(kw, flag):
    """A count given as a float (the Python API) was truncated: batch_size=2.7 trained batches of 2."""
    with pytest.raises(ValueError, match=f"{flag}: must be a whole number"):
        TrainOptions(**kw).validate()
    TrainOptions(lr=1).validate()   # an int where a float is wanted is fine


def test_workers_beyond_the_cores_are_refused_before_any_work(tmp_path, monkeypatch):
    # --workers 1000000 forked loader workers for minutes (100+ processes on 2 cores) before the first step
    def no_setup(*args, **kwargs):
        raise AssertionError("the set-up ran: --workers was not checked first")

    monkeypatch.setattr(distributed, "node_limits", lambda info: (2, 1, ""))
    monkeypatch.setattr(train_module, "prepare_rank", no_setup)
    with pytest.raises(ValueError, match=r"--workers 1000000: .* 2 core\(s\).* give --workers 8 or fewer"):
        train_module.train(TrainOptions(workers=1_000_000, steps=1, device="cpu", out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    with pytest.raises(AssertionError, match="the set-up ran"):   # 4 a core still passes, and so does the default
        train_module.train(TrainOptions(workers=8, steps=1, device="cpu", out=str(tmp_path / "run")))


def test_eval_workers_beyond_the_cores_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    # eval --workers had no upper bound either: the same check, before the base model or the adapter loads
    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded: --workers was not checked first")

    monkeypatch.setattr(distributed, "node_limits", lambda info: (2, 1, ""))
    monkeypatch.setattr(evaluate_module, "load_backbone", no_load)
    monkeypatch.setattr(evaluate_module, "load_pretrained", no_load)
    with pytest.raises(ValueError, match=r"--workers 9: .* 2 core\(s\).* give --workers 8 or fewer"):
        evaluate_module.evaluate_base("vqa", device="cpu", workers=9, out=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
    with pytest.raises(AssertionError, match="the model loaded"):
        evaluate_module.evaluate_base("vqa", device="cpu", workers=8, out=tmp_path / "ev")


def test_temperature_below_the_adapter_floor_is_refused_as_the_option(capsys):
    # 1e-9 passed the command line (> 0) and failed later as the adapter config's "temperature: must be at least"
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--temperature", "1e-9"])
    assert e.value.code == 2
    assert "--temperature: must be >= 1e-06, got 1e-09" in capsys.readouterr().err
