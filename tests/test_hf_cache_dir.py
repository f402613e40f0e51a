"""``cache_dir`` of the ``hf_datasets`` reader (where parquet files are converted into ``datasets``' Arrow cache): a
relative one was taken from the process's working directory, so one spec wrote (and looked for) its cache wherever
the command ran; it is under the data root, as the spec's other paths (``path``, ``images``) are."""

from __future__ import annotations

import pickle

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.images import load_image  # noqa: E402
from mtl_lora_vl.data.readers import read_split  # noqa: E402
from mtl_lora_vl.tasks.spec import SpecError, load_spec  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def test_a_relative_cache_dir_is_under_the_data_root_wherever_the_command_runs(tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "ds").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 12), (200, 30, 30))] * 2,
                                "caption": ["a", "b"]}).to_parquet(str(root / "ds" / "train-0.parquet"))
    monkeypatch.chdir(elsewhere)
    split = read_split("hf_datasets", root, path="ds", cache_dir="arrow_cache")
    table = split.examples[0].image.table
    assert table.cache_dir == str(root / "arrow_cache")
    assert any((root / "arrow_cache").rglob("*.arrow"))          # the cache is under the data root
    assert not (elsewhere / "arrow_cache").exists()              # was: written here, the working directory
    monkeypatch.chdir(tmp_path)   # a loader worker reopens the table from any folder: the same cache
    assert load_image(pickle.loads(pickle.dumps(split.examples[1])).image).size == (16, 12)


def test_a_blank_cache_dir_is_refused_when_the_spec_loads(tmp_path):
    spec = tmp_path / "mine.toml"
    spec.write_text('kind = "captioning"\n[data]\nformat = "hf_datasets"\npath = "ds"\ncache_dir = " "\n'
                    '[data.train]\nsplit = "train"\n[data.val]\nsplit = "test"\n')
    with pytest.raises(SpecError, match=r"mine\.toml: field 'data': option 'cache_dir' is blank; give the folder .* "
                                        r"\(relative: under the data root\)"):
        load_spec(spec)
