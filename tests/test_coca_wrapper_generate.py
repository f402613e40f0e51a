"""``MTLLoRAModel(coca).generate`` takes open_clip's ``CoCa.generate`` arguments and runs the package's own caption
decoding under the wrapper's route: open_clip's own imports its samplers from transformers 4 (``BeamSearchScorer``, the
logits warpers), so under the transformers 5 this package needs it failed with open_clip's "Please install
transformers" (installed), and was then refused. The tokens are those ``bb.generate`` writes under ``model.route``,
greedy and beams, one task per image; what it cannot run (sampling, group diversity, ...) is refused by name."""

from __future__ import annotations

import logging

import open_clip.coca_model
import pytest
import torch
import transformers
from vl_tiny import CONTEXT, tiny_backbone
from vlm_checks import perturb_adapters

import mtl_lora_vl as mlv

TASKS = ["captioning", "retrieval", "captioning"]


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
    torch.manual_seed(0)
    bb = tiny_backbone(tmp_path_factory.mktemp("coca"), coca=True)
    model = mlv.MTLLoRAModel(bb.model, mlv.MTLLoRAConfig(tasks=["captioning", "retrieval"], r=2))
    perturb_adapters(bb.model, std=0.3)   # (B starts at zero: the tasks would caption alike)
    return bb, model


def _ids(bb) -> dict:
    return dict(sot_token_id=bb.bos_id, eos_token_id=bb.eos_id, pad_token_id=bb.pad_id)


@pytest.mark.parametrize(("theirs", "ours"), [
    (dict(generation_type="top_k", seq_len=8), dict(max_len=6)),   # open_clip's greedy (top_k=1): 8th place the end's
    (dict(generation_type="greedy", max_len=7), dict(max_len=7)),
    (dict(generation_type="beam_search", num_beams=3, seq_len=8), dict(max_len=7, beam_size=3)),
    (dict(beam_size=2, max_len=5), dict(max_len=5, beam_size=2)),
])
def test_wrapper_generate_on_a_coca_writes_the_backbones_tokens_per_task(coca, theirs, ours):
    bb, model = coca
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with model.route(TASKS):
        want = bb.generate(images, **ours)
    with model.route("captioning"):
        one_task = bb.generate(images, **ours)
    assert want != one_task   # (the route matters: the retrieval row captions otherwise)
    for out in (model.generate(images, tasks=TASKS, **_ids(bb), **theirs),
                model.generate(images, adapter_names=TASKS, **_ids(bb), **theirs)):
        assert out.dtype == torch.long and out.shape[0] == 3 and (out[:, 0] == bb.bos_id).all()
        assert [bb.decode(row) for row in out] == want
    with model.route(TASKS):   # an open route
        assert [bb.decode(row) for row in model.generate(images, **_ids(bb), **theirs)] == want


#: What open_clip's greedy loop (generation_type 'top_k') imports from transformers; all still in transformers 5
#: (its beam search's BeamSearchScorer is not).
SAMPLING = ("LogitsProcessorList", "TopKLogitsWarper", "TopPLogitsWarper", "RepetitionPenaltyLogitsProcessor",
            "MinLengthLogitsProcessor", "MaxLengthCriteria", "StoppingCriteriaList")


@pytest.fixture
def open_clips_greedy(monkeypatch):
    """open_clip's own CoCa.generate, able to run its greedy loop: the transformers names it failed to import."""
    if not all(hasattr(transformers, n) for n in SAMPLING):
        pytest.skip("this transformers lacks what open_clip's greedy loop imports")
    for name in SAMPLING:
        monkeypatch.setattr(open_clip.coca_model, name, getattr(transformers, name), raising=False)
    monkeypatch.setattr(open_clip.coca_model, "_has_transformers", True)
    monkeypatch.setitem(open_clip.coca_model.GENERATION_TYPES, "top_k", transformers.TopKLogitsWarper)
    return open_clip.coca_model.CoCa.generate


@pytest.mark.parametrize("seq_len", [2, 3, 4, 8, CONTEXT])   # (4: rows ending in the last free place)
def test_greedy_writes_open_clips_own_tokens(coca, open_clips_greedy, seq_len):
    """open_clip's greedy loop writes the end token in seq_len's last place (seq_len 8: at most 6 words and the end
    token); rows ended before it are padded; the output is as wide as its longest row, or seq_len when fixed."""
    bb, model = coca
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(seq_len=seq_len, generation_type="top_k", top_k=1, min_seq_len=0, **_ids(bb))
    words = model.generate(images, tasks=TASKS, **{**kw, "seq_len": CONTEXT})
    early = int(words[0, 2])   # (a token row 0 writes second: as the end token, row 0 ends early)
    assert not (words[1:2, 1:] == early).any()   # (and row 1 never writes it: still open at the last place)
    for ids, fixed in ((_ids(bb), False), ({**_ids(bb), "eos_token_id": early}, False),
                       ({**_ids(bb), "eos_token_id": early}, True)):
        args = {**kw, **ids, "fixed_output_length": fixed}
        with model.route(TASKS):
            theirs = open_clips_greedy(bb.model, images, **args)
        ours = model.generate(images, tasks=TASKS, **args)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (ids, fixed, ours, theirs)
        assert ours.shape[1] == seq_len or (not fixed and (ours[:, 1:] == ids["eos_token_id"]).any(dim=1).all())
    if seq_len > 3:   # rows 0 and 2 alone: both end early, and the output stops after their end token
        with model.route(TASKS[::2]):
            theirs = open_clips_greedy(bb.model, images[::2], **{**kw, "eos_token_id": early})
        ours = model.generate(images[::2], tasks=TASKS[::2], **{**kw, "eos_token_id": early})
        assert torch.equal(ours, theirs) and ours.shape[1] == 3


def test_open_clips_positional_arguments_and_fixed_length(coca):
    bb, model = coca
    images = torch.randn(2, 3, 32, 32)
    # generate(image, text, seq_len, max_seq_len, temperature, generation_type, top_p, top_k, pad, eos, sot, ...)
    out = model.generate(images, None, 6, 77, 1.0, "top_k", 0.1, 1, bb.pad_id, bb.eos_id, bb.bos_id, tasks=TASKS[:2])
    with model.route(TASKS[:2]):
        assert [bb.decode(row) for row in out] == bb.generate(images, max_len=4)   # (6th place: the end token)
    fixed = model.generate(images, seq_len=6, generation_type="greedy", fixed_output_length=True, tasks=TASKS[:2],
                           **_ids(bb))
    assert fixed.shape == (2, 6) and torch.equal(fixed[:, :out.shape[1]], out)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(generation_type="top_p"), r"generation_type='top_p' is not run here: only greedy decoding"),
    (dict(generation_type="top_k", top_k=5), r"top_k=5 samples, which is not run here"),
    (dict(num_beam_groups=3), r"num_beam_groups=3 is not run here \(diverse group beam search"),
    (dict(min_seq_len=5), r"min_seq_len=5 is not run here \(a minimum caption length"),
    (dict(repetition_penalty=1.2), r"repetition_penalty=1.2 is not run here"),
    (dict(text=torch.ones(2, 1, dtype=torch.long)),
     r"text=a tensor of shape \(2, 1\) is not run here \(a prompt to continue"),
    (dict(stopping_criteria=[]), r"stopping_criteria=\[\] is not run here"),
    (dict(generation_type="greedy", num_beams=3), r"'greedy' decoding keeps one sequence, but 3 beams"),
    (dict(seq_len=1), r"seq_len must be an integer >= 2, got 1"),
    (dict(num_beams=2.5), r"num_beams must be an integer >= 1, got 2.5"),
    (dict(seq_len=10, max_seq_len=5), r"max_seq_len=5 .* is not run here"),
])
def test_what_the_decoding_does_not_run_is_refused_by_name(coca, kw, message):
    bb, model = coca
    with pytest.raises(ValueError, match=r"MTLLoRAModel.generate \(CoCa\): " + message):
        model.generate(torch.randn(2, 3, 32, 32), tasks=TASKS[:2], **{**_ids(bb), **kw})


def test_bad_calls_are_named(coca):
    bb, model = coca
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"sot_token_id \(open_clip's default 49406, CLIP's BPE\) is not a token of "
                                         r"the model's vocabulary of \d+; pass sot_token_id=, eos_token_id="):
        model.generate(images, tasks=TASKS[:2])
    with pytest.raises(TypeError, match=r"pass seq_len \(open_clip's\) or max_len \(the backbone's\), not both"):
        model.generate(images, seq_len=5, max_len=4, tasks=TASKS[:2], **_ids(bb))
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'max_new_tokens'"):
        model.generate(images, max_new_tokens=4, tasks=TASKS[:2], **_ids(bb))
    with pytest.raises(ValueError, match=r"no images \(a batch of shape \(0, 3, 32, 32\)\)"):
        model.generate(images[:0], tasks="captioning", **_ids(bb))


def test_a_seq_len_past_the_context_is_said(coca, caplog):
    bb, model = coca
    images = torch.randn(1, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        out = model.generate(images, seq_len=100, generation_type="greedy", tasks=["retrieval"], **_ids(bb))
    assert out.shape[1] <= CONTEXT
    said = [r.getMessage() for r in caplog.records if "caption decoder's context" in r.getMessage()]
    assert said == [f"generate: seq_len 100 passes the caption decoder's context of {CONTEXT} tokens (its start "
                    f"token and {CONTEXT - 1} new ones): captions stop at {CONTEXT - 1} tokens; lower seq_len to "
                    f"{CONTEXT} or less"]
