"""MTLLoRAConfig validation and JSON round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_lora_vl as mlv
from mtl_lora_vl.adapters.rows import mixture
from mtl_lora_vl.config import MIN_TEMPERATURE, UnknownTaskError


def test_json_round_trip(tmp_path):
    cfg = mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"], r=4, alpha=8, n_up=2, temperature=0.7,
                            lambda_type="diagonal", method="mtl_lora", targets={"image": [r"fc1$"]}, qkv_slices="qv")
    assert mlv.MTLLoRAConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert mlv.MTLLoRAConfig.from_json(tmp_path / "c.json") == cfg
    assert cfg.scaling == 2.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(tasks=[]), "tasks"),
        (dict(tasks=["a", "a"]), "tasks"),
        (dict(tasks=["a", ""]), "tasks"),
        (dict(tasks=["a", "b.hard"]), "tasks"),
        (dict(tasks=None), "tasks"),
        (dict(tasks={"b", "a"}), "tasks"),           # no order: task ids would differ from run to run
        (dict(tasks=["a"], r=0), "r"),
        (dict(tasks=["a"], n_up=0), "n_up"),
        (dict(tasks=["a"], temperature=0), "temperature"),
        (dict(tasks=["a"], alpha=-1), "alpha"),
        (dict(tasks=["a"], alpha=float("nan")), "alpha"),          # every output NaN, even at init (0 * nan)
        (dict(tasks=["a"], alpha=float("inf")), "alpha"),
        (dict(tasks=["a"], temperature=float("inf")), "temperature"),   # silently uniform mixing
        (dict(tasks=["a"], temperature=1e-39), "temperature"),   # w_t / τ overflows: softmax NaN (test below)
        (dict(tasks=["a"], dropout=1.5), "dropout"),
        (dict(tasks=["a"], method="adalora"), "method"),
        (dict(tasks=["a"], lambda_type="block"), "lambda_type"),
        (dict(tasks=["a"], targets="everything"), "targets"),
        (dict(tasks=["a"], targets={"audio": ["x"]}), "targets"),
        (dict(tasks=["a"], targets={"image": "fc1"}), r"targets\['image'\]"),
        (dict(tasks=["a"], targets={"image": ["(unclosed"]}), r"targets\['image'\]"),
        (dict(tasks=["a"], qkv_slices="qx"), "qkv_slices"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(mlv.ConfigError, match=rf"^{field}"):
        mlv.MTLLoRAConfig(**kwargs)


def test_from_dict_rejects_unknown_fields_and_bad_json():
    with pytest.raises(mlv.ConfigError, match=r"unknown config field\(s\) \['rank'\]"):
        mlv.MTLLoRAConfig.from_dict({"tasks": ["a"], "rank": 4})
    with pytest.raises(mlv.ConfigError, match="not valid JSON"):
        mlv.MTLLoRAConfig.from_json("{not json")
    with pytest.raises(mlv.ConfigError, match=r"'\[\"a\"\]' is neither a JSON object .* nor an existing file"):
        mlv.MTLLoRAConfig.from_json('["a"]')   # was FileNotFoundError: No such file or directory: '["a"]'


def test_tasks_from_any_ordered_iterable():
    np = pytest.importorskip("numpy")
    for tasks in ({"vqa": 1, "retrieval": 2}.keys(), iter(["vqa", "retrieval"]), np.array(["vqa", "retrieval"])):
        cfg = mlv.MTLLoRAConfig(tasks=tasks)
        assert cfg.tasks == ["vqa", "retrieval"] and all(type(t) is str for t in cfg.tasks)


def test_numpy_scalars_are_numbers():
    """r=np.int64(8) was refused as 'must be an integer'; dropout=np.float64 was taken as it was."""
    np = pytest.importorskip("numpy")
    cfg = mlv.MTLLoRAConfig(tasks=["a"], r=np.int64(8), n_up=np.int32(2), alpha=np.float32(16), dropout=np.float64(0.1))
    assert (cfg.r, cfg.n_up, cfg.alpha, cfg.dropout) == (8, 2, 16.0, pytest.approx(0.1))
    assert [type(v) for v in (cfg.r, cfg.n_up, cfg.alpha, cfg.dropout)] == [int, int, float, float]
    assert mlv.MTLLoRAConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("kwargs, degenerate", [
    (dict(method="mtl_lora", lambda_type="none", n_up=1), True),
    (dict(method="moe_lora", n_up=1), True),
    (dict(method="mtl_lora", lambda_type="full", n_up=1), False),   # Λ_t is still per task
    (dict(method="mtl_lora", lambda_type="none", n_up=2), False),
])
def test_a_config_with_no_task_specific_part_is_warned_about(kwargs, degenerate):
    """mtl_lora with n_up=1 and no Λ, or moe_lora with one expert, gives every task the same update (w_t's
    gradient is exactly 0), silently."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        mlv.MTLLoRAConfig(tasks=["a", "b"], **kwargs)
    assert any("no task-specific part left" in str(w.message) for w in seen) == degenerate


def test_smallest_temperature_keeps_the_mixing_finite():
    """At 1e-39 the mixing weights of a task whose w_t grew to 1 were NaN (w_t / τ = inf); at the smallest allowed τ
    they stay finite for any float32 w_t below 3e32."""
    w = torch.tensor([[1.0, 1.0, -2.0], [3e32, -3e32, 0.0]])
    assert torch.isnan(mixture(w, 1e-39)).any()
    assert torch.isfinite(mixture(w, MIN_TEMPERATURE)).all()
    assert mlv.MTLLoRAConfig(tasks=["a"], temperature=MIN_TEMPERATURE).temperature == MIN_TEMPERATURE


def test_smallest_temperature_keeps_a_half_precision_adapter_finite():
    """A model .half()-ed after attach mixed its up-projections in float16: at τ = 1e-6 a w_t of 0.1 gave
    w_t / τ = inf and NaN outputs (float16 stops at 65504). The mixing is computed in float32 now."""
    w = torch.tensor([[0.1, 0.0, -0.4]], dtype=torch.float16)
    pi = mixture(w, MIN_TEMPERATURE)
    assert pi.dtype == torch.float16 and torch.equal(pi, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float16))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    mlv.attach(model, mlv.MTLLoRAConfig(tasks=["a", "b"], r=2, temperature=MIN_TEMPERATURE, targets={"image": ["^0$"]}))
    nn.init.normal_(model[0].lora_B)
    model.half()
    with torch.no_grad(), mlv.route(model, "a"):
        assert torch.isfinite(model(torch.randn(2, 8, dtype=torch.float16))).all()


def test_an_unknown_task_name_suggests_the_close_one():
    """export --task VQA of an adapter of 'vqa' said only 'unknown task'; a case or spelling slip is named."""
    cfg = mlv.MTLLoRAConfig(tasks=["vqa", "retrieval"])
    with pytest.raises(UnknownTaskError, match=r"unknown task 'VQA'.*\(did you mean 'vqa'\?\)"):
        cfg.task_index("VQA")
    with pytest.raises(UnknownTaskError, match=r"did you mean 'retrieval'"):
        cfg.task_index("retreival")
    with pytest.raises(UnknownTaskError, match=r"knows \['vqa', 'retrieval'\]$"):
        cfg.task_index("captioning")
