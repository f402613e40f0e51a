"""Parquet folders of a dataset with several configs, as ``datasets`` writes them (``push_to_hub(config_name=...)``:
``en/train-00000-of-00001.parquet`` beside ``de/train-...``; the hub's parquet branch: ``en/train/0000.parquet``).
Such a folder was read as one split mixing every config's rows; it is refused, naming the configs' folders, and one
config is read by giving its folder as ``path``."""

from __future__ import annotations

import re

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf_datasets reader needs the optional `datasets` package "
                                                   "(pip install \"mtl-lora-vl[datasets]\")")

from mtl_lora_vl.data.readers import read_split  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()


def _write(path, config: str, n: int = 3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (16 + i, 12), (200, 30, 30)) for i in range(n)],
                                "caption": [f"{config} picture {i}" for i in range(n)]}).to_parquet(str(path))


def _configs(split) -> set[str]:
    return {c.split()[0] for e in split.examples for c in e.captions}


@pytest.mark.parametrize("shard", ["train-00000-of-00001.parquet", "train/0000.parquet"])
def test_a_folder_of_configs_is_refused_naming_them_and_one_is_read_by_its_folder(tmp_path, shard):
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for config in ("en", "de"):
        _write(root / "multi" / config / shard, config)
        _write(root / "multi" / config / shard.replace("train", "test"), config, 2)
    hint = re.escape('path = "multi/de"')   # (as the spec names the folder: under the data root)
    with pytest.raises(ValueError, match=r"multi: the parquet files of split 'train' lie in the folders \['de', 'en'\]"
                                         rf", as the configs of a dataset do .*giving its folder as path, e.g. {hint}"):
        read_split("hf_datasets", root, path="multi", split="train", cache_dir=cache)   # was: 6 rows, en and de
    with pytest.raises(ValueError, match=r"multi: the parquet files of split 'test' lie in the folders \['de', 'en'\]"):
        read_split("hf_datasets", root, path="multi", cache_dir=cache)
    en = read_split("hf_datasets", root, path="multi/en", split="train", cache_dir=cache)
    assert len(en.examples) == 3 and _configs(en) == {"en"}
    assert _configs(read_split("hf_datasets", root, path="multi/de", split="test", cache_dir=cache)) == {"de"}


def test_one_config_in_a_data_folder_is_not_taken_for_several(tmp_path):
    """The default config's ``data/`` folder and a split's own folder of shards stay one split each."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "hub" / "data" / "train-00000-of-00002.parquet", "en", 2)
    _write(root / "hub" / "data" / "train-00001-of-00002.parquet", "en", 1)
    _write(root / "hub" / "data" / "test-00000-of-00001.parquet", "en", 2)
    assert len(read_split("hf_datasets", root, path="hub", split="train", cache_dir=cache).examples) == 3
    _write(root / "mixed" / "train" / "0.parquet", "en", 2)
    _write(root / "mixed" / "data" / "test-00000-of-00001.parquet", "en", 2)
    with pytest.raises(ValueError, match=r"the parquet files hold the splits \['test', 'train'\]; set split"):
        read_split("hf_datasets", root, path="mixed", cache_dir=cache)   # two splits, each in one folder: no configs
    _write(root / "split" / "train" / "a" / "0.parquet", "en", 2)
    _write(root / "split" / "train" / "b" / "0.parquet", "en", 1)
    assert len(read_split("hf_datasets", root, path="split", split="train", cache_dir=cache).examples) == 3


def test_config_prefixed_shards_side_by_side_are_refused_and_read_by_their_full_name(tmp_path):
    """``en_train-00000-of-00001.parquet`` beside ``de_train-...`` (outside ``data/``): each hub shard's name is its
    split, whole, so split = "train" names none of them and would mix the two; refused, naming both, and each is
    read as split = "en_train" / "de_train"."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for config in ("en", "de"):
        _write(root / "flat" / f"{config}_train-00000-of-00001.parquet", config)
    with pytest.raises(ValueError, match=r"split 'train' names no split of its own here, and the parquet files it "
                                         r"matches are the shards of the splits \['de_train', 'en_train'\].*set split "
                                         "to one of them"):
        read_split("hf_datasets", root, path="flat", split="train", cache_dir=cache)
    with pytest.raises(ValueError, match=r"hold the splits \['de_train', 'en_train'\]; set split"):
        read_split("hf_datasets", root, path="flat", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="flat", split="en_train", cache_dir=cache)) == {"en"}


def test_a_folder_of_saved_configs_names_them(tmp_path):
    """``en/`` and ``de/`` each saved with ``save_to_disk``: the folder was refused as "neither a save_to_disk folder
    nor a folder of .parquet files", with no word of the saved datasets inside it."""
    for config in ("en", "de"):
        table = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "caption": [config]})
        datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "multi" / config)
    hint = re.escape(f'path = "{tmp_path / "multi" / "de"}"')
    with pytest.raises(FileNotFoundError, match=r"multi is neither a save_to_disk folder .*; its folders "
                                                rf"\['de', 'en'\] are saved datasets .*give one of them as path, "
                                                rf"e.g. {hint}"):
        read_split("hf_datasets", tmp_path, path="multi", split="train")
    assert _configs(read_split("hf_datasets", tmp_path, path="multi/en", split="train")) == {"en"}


def test_a_split_folder_beside_a_longer_split_folder_is_read_alone(tmp_path):
    """The parquet branch's default/test/0000.parquet beside default/test_hard/0000.parquet: split = "test" read both
    folders (6 rows, 3 of test_hard), as a hub shard test_hard-00000-of-00001 was read as test before 415b9e4."""
    root = tmp_path
    _write(root / "ds" / "default" / "test" / "0000.parquet", "test")
    _write(root / "ds" / "default" / "test_hard" / "0000.parquet", "hard")
    cache = str(root / "cache")
    assert _configs(read_split("hf_datasets", root, path="ds", split="test", cache_dir=cache)) == {"test"}
    assert _configs(read_split("hf_datasets", root, path="ds", split="test_hard", cache_dir=cache)) == {"hard"}


def test_split_names_in_part_two_folders_are_refused_and_one_is_read(tmp_path):
    """MNLI's test_matched/ beside test_mismatched/ (no test/): split = "test" read both folders as one split (6 rows,
    two splits' rows); refused naming the folders and what to set, as two hub shard names are. One such folder alone
    (val2014/) is read as the split, as train2017/ is; without split = ... the two are two splits."""
    root = tmp_path
    _write(root / "ds" / "x" / "test_matched" / "0.parquet", "matched")
    _write(root / "ds" / "x" / "test_mismatched" / "0.parquet", "mismatched")
    cache = str(root / "cache")
    with pytest.raises(ValueError, match=r"\['test_matched', 'test_mismatched'\].*split = \"test_matched\""):
        read_split("hf_datasets", root, path="ds", split="test", cache_dir=cache)
    with pytest.raises(ValueError, match=r"\['test_matched', 'test_mismatched'\]; set split"):
        read_split("hf_datasets", root, path="ds", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="ds", split="test_matched", cache_dir=cache)) == {"matched"}
    _write(root / "coco" / "val2014" / "0.parquet", "v14")
    assert _configs(read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)) == {"v14"}
    _write(root / "coco" / "val2017" / "0.parquet", "v17")
    with pytest.raises(ValueError, match=r"\['val2014', 'val2017'\].*split = \"val2014\""):
        read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)


def test_file_names_naming_the_split_in_part_follow_the_folder_rule(tmp_path, caplog):
    """MNLI's test_matched.parquet beside test_mismatched.parquet (files, not folders or hub shards): split = "test"
    read both (6 rows, two splits' rows mixed), and without split = ... both were the one split 'test'. As folders
    are: two longer names are refused naming them and what to set; one alone is read with a note; a file named the
    split whole (test.parquet, test-0.parquet) is read without the longer-named one beside it."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "mnli" / "test_matched.parquet", "matched")
    _write(root / "mnli" / "test_mismatched.parquet", "mismatched")
    with pytest.raises(ValueError, match=r"mnli: no file or folder is named split 'test' whole, and the parquet files "
                                         r"it matches are named for the splits \['test_matched', 'test_mismatched'\] "
                                         r".*set split to one of them, e.g. split = \"test_matched\""):
        read_split("hf_datasets", root, path="mnli", split="test", cache_dir=cache)
    with pytest.raises(ValueError, match=r"hold the splits \['test_matched', 'test_mismatched'\]; set split"):
        read_split("hf_datasets", root, path="mnli", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="mnli", split="test_matched", cache_dir=cache)) == {"matched"}
    _write(root / "coco" / "captions_val2014.parquet", "v14")
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        assert _configs(read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)) == {"v14"}
    assert "split 'val' is read from the file(s) named for the split 'val2014'" in caplog.text
    _write(root / "coco" / "captions_val2017.parquet", "v17")
    with pytest.raises(ValueError, match=r"\['val2014', 'val2017'\].*split = \"val2014\""):
        read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)
    for name in ("test-0.parquet", "test-1.parquet"):   # the split named whole (two shards of it): read alone
        _write(root / "hard" / name, "test", 1)
    _write(root / "hard" / "test_hard.parquet", "hard")
    _write(root / "hard" / "train_0.parquet", "train", 1)
    split = read_split("hf_datasets", root, path="hard", split="test", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"test"}
    assert _configs(read_split("hf_datasets", root, path="hard", split="test_hard", cache_dir=cache)) == {"hard"}
    for name in ("train_part_1.parquet", "train_part_2.parquet", "train.snappy.parquet", "my_train_data.parquet"):
        _write(root / "parts" / name, "train", 1)   # no longer split names: all four read, none left out
    assert len(read_split("hf_datasets", root, path="parts", split="train", cache_dir=cache).examples) == 4


def test_a_file_or_folder_of_another_format_is_refused_naming_the_format_to_read_it(tmp_path):
    """path = a .jsonl, .csv or .arrow file was read as parquet: a bare pyarrow ArrowInvalid "Parquet magic bytes not
    found in footer" naming no fix; a folder of such files was "neither a save_to_disk folder nor a folder of .parquet
    files", with no word of what it holds. Each is refused naming the format that reads it."""
    root = tmp_path
    (root / "rows").mkdir()
    (root / "rows" / "train.jsonl").write_text('{"image": "a.png", "caption": "red"}\n')
    (root / "rows" / "test.csv").write_text("image,caption\na.png,red\n")
    table = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "caption": ["red"]})
    table.save_to_disk(str(root / "saved"))
    arrow = next((root / "saved").glob("*.arrow"))
    with pytest.raises(ValueError, match=r"train.jsonl is a \.jsonl file, not parquet.*format = \"jsonl\""):
        read_split("hf_datasets", root, path="rows/train.jsonl")
    with pytest.raises(ValueError, match=r"test.csv is a \.csv file, not parquet.*format = \"csv\""):
        read_split("hf_datasets", root, path="rows/test.csv")
    hint = re.escape(f'path = "{root / "saved"}"')
    with pytest.raises(ValueError, match=rf"{arrow.name} is a \.arrow file, not parquet.*{hint}"):
        read_split("hf_datasets", root, path=f"saved/{arrow.name}")
    with pytest.raises(FileNotFoundError, match=r"nor a folder of .parquet files; it holds \.csv, \.jsonl files "
                                                r"\(test.csv, train.jsonl\).*format = \"jsonl\""):
        read_split("hf_datasets", root, path="rows", split="train")
    assert len(read_split("hf_datasets", root, path="saved").examples) == 1
    _write(root / "pq" / "rows.pq", "pq", 2)   # a parquet file by its bytes, whatever its name: read
    assert len(read_split("hf_datasets", root, path="pq/rows.pq", cache_dir=str(root / "cache")).examples) == 2


def test_a_file_named_the_split_whole_is_read_without_a_folder_naming_it_in_part(tmp_path, caplog):
    """c1b1e76's rule -- where a file or folder names the split whole, that one is the split -- left out the longer-
    named files beside test.parquet, but not a folder's: test.parquet beside test_hard/0.parquet read test_hard's rows
    into split 'test' (4 rows of two splits). The folder's files are now left out too, with the note."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "ds" / "test.parquet", "test", 2)
    _write(root / "ds" / "test_hard" / "0.parquet", "hard", 2)
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="ds", split="test", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"test"}
    assert "split 'test' is read without the file(s) ['test_hard/0.parquet'], named for the longer split(s) " \
           "['test_hard']" in caplog.text
    assert _configs(read_split("hf_datasets", root, path="ds", split="test_hard", cache_dir=cache)) == {"hard"}


def test_shard_numbers_joined_to_the_split_name_are_shards_and_years_are_splits(tmp_path, caplog):
    """train0.parquet + train1.parquet were refused (after c1b1e76) as the two splits 'train0' / 'train1', where
    ``datasets`` reads them as 'train' (digits may follow the split's name). Digits joined on are a shard number, so
    the files are 'train'; a year (19xx / 20xx, COCO's val2014 / val2017) still names a split of its own, and the
    refusal names the files of each."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for name in ("train0.parquet", "train1.parquet"):
        _write(root / "joined" / name, "train", 1)
    assert len(read_split("hf_datasets", root, path="joined", split="train", cache_dir=cache).examples) == 2
    assert len(read_split("hf_datasets", root, path="joined", cache_dir=cache).examples) == 2   # one split
    for name in ("train_0.parquet", "train-01.parquet", "train02.parquet"):
        _write(root / "apart" / name, "train", 1)
    assert len(read_split("hf_datasets", root, path="apart", split="train", cache_dir=cache).examples) == 3
    for name in ("val2014.parquet", "val2017.parquet"):
        _write(root / "coco" / name, name[:7])
    with pytest.raises(ValueError, match=r"named for the splits \['val2014', 'val2017'\] \(in their folders' or their "
                                         r"own names: 'val2014': val2014.parquet; 'val2017': val2017.parquet\).*"
                                         r"split = \"val2014\""):
        read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)
    with pytest.raises(ValueError, match=r"hold the splits \['val2014', 'val2017'\]; set split .*by their names: "
                                         r"'val2014': val2014.parquet; 'val2017': val2017.parquet\)"):
        read_split("hf_datasets", root, path="coco", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="coco", split="val2017", cache_dir=cache)) == {"val2017"}
    _write(root / "coco" / "val0.parquet", "val", 1)   # a file of the split itself: the years' files left out
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)
    assert _configs(split) == {"val"}
    assert "read without the file(s) ['val2014.parquet', 'val2017.parquet']" in caplog.text


def test_a_plain_file_beside_hub_shards_of_its_split_is_read_and_longer_shards_are_noted(tmp_path, caplog):
    """train_0.parquet beside the hub shard train-00000-of-00001.parquet (both the split 'train', as ``datasets``
    reads them, and as split = None read them): split = "train" read the shard alone, train_0's rows dropped with no
    word. Both are read; a hub shard of a longer split beside them (train_hard-00000-of-00001) is left out, noted."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "ds" / "train-00000-of-00001.parquet", "shard", 2)
    _write(root / "ds" / "train_0.parquet", "plain", 1)
    split = read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache)
    assert len(split.examples) == 3 and _configs(split) == {"shard", "plain"}   # was: 2 rows, the shard's
    assert len(read_split("hf_datasets", root, path="ds", cache_dir=cache).examples) == 3
    _write(root / "ds" / "train_hard-00000-of-00001.parquet", "hard", 2)
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache)
    assert len(split.examples) == 3 and _configs(split) == {"shard", "plain"}
    assert "split 'train' is read without the file(s) ['train_hard-00000-of-00001.parquet'], named for the longer " \
           "split(s) ['train_hard']" in caplog.text


@pytest.mark.parametrize("folders", [("train0", "train1"), ("train_0", "train_1"), ("train-00", "train 01")])
def test_shard_numbers_joined_to_a_split_folder_are_shards_and_years_are_splits(tmp_path, folders):
    """train0/ + train1/ (or train_0/ + train_1/) were refused as the two splits 'train0' / 'train1', where
    ``datasets`` reads them as 'train' (and a file train0.parquet is 'train' here): a shard number after a folder's
    split name is dropped as after a file's; a year (val2014/ beside val2017/) still names a split of its own."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for folder in folders:
        _write(root / "ds" / folder / "0.parquet", "train", 1)
    _write(root / "ds" / "test_hard" / "0.parquet", "hard", 1)
    _write(root / "ds" / "train_hard" / "0.parquet", "hard", 1)   # a split of its own: left out beside train0/
    split = read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"train"}
    assert _configs(read_split("hf_datasets", root, path="ds", split="train_hard", cache_dir=cache)) == {"hard"}
    for folder in folders:
        _write(root / "one" / folder / "0.parquet", "train", 1)
    assert len(read_split("hf_datasets", root, path="one", cache_dir=cache).examples) == 2   # one split, no split =
    for year in ("val2014", "val_2017"):
        _write(root / "coco" / year / "0.parquet", year)
    with pytest.raises(ValueError, match=r"named for the splits \['val2014', 'val_2017'\]"):
        read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)
    with pytest.raises(ValueError, match=r"hold the splits \['val2014', 'val_2017'\]"):
        read_split("hf_datasets", root, path="coco", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="coco", split="val2014", cache_dir=cache)) == {"val2014"}


def test_a_year_after_a_separator_names_a_split_in_a_file_name_as_in_a_folder_name(tmp_path, caplog):
    """val_2014.parquet was read as split 'val' (digits after a separator taken for a shard number) while the folder
    val_2014/ is a split of its own: val_2014.parquet + val_2017.parquet were read together as 'val', mixing two
    COCO splits. A year after a separator names a split in a file's name too; other digits stay a shard number."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for name in ("val_2014.parquet", "val_2017.parquet"):
        _write(root / "coco" / name, name[:8], 1)
    with pytest.raises(ValueError, match=r"named for the splits \['val_2014', 'val_2017'\] \(in their folders' or "
                                         r"their own names: 'val_2014': val_2014.parquet; 'val_2017': "
                                         r"val_2017.parquet\).*split = \"val_2014\""):
        read_split("hf_datasets", root, path="coco", split="val", cache_dir=cache)
    with pytest.raises(ValueError, match=r"hold the splits \['val_2014', 'val_2017'\]"):
        read_split("hf_datasets", root, path="coco", cache_dir=cache)
    assert _configs(read_split("hf_datasets", root, path="coco", split="val_2017", cache_dir=cache)) == {"val_2017"}
    _write(root / "one" / "val_2014.parquet", "val_2014", 2)
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="one", split="val", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"val_2014"}
    assert "split 'val' is read from the file(s) named for the split 'val_2014' (the one name holding it)" \
        in caplog.text
    for name in ("train_0.parquet", "train_1.parquet"):
        _write(root / "shards" / name, "train", 1)
    assert len(read_split("hf_datasets", root, path="shards", split="train", cache_dir=cache).examples) == 2
    assert len(read_split("hf_datasets", root, path="shards", cache_dir=cache).examples) == 2   # one split, no split =


@pytest.mark.parametrize("hard", ["train_0_hard.parquet", "train0_hard.parquet", "train_0_hard/0.parquet",
                                  "train0_hard/0.parquet"])
def test_a_word_after_a_shard_number_names_a_longer_split_whether_the_digits_are_joined_or_apart(tmp_path, caplog,
                                                                                                   hard):
    """train0_hard.parquet was the split 'train0_hard' (left out beside train.parquet, as the folders train0_hard/
    and train_0_hard/ are), but train_0_hard.parquet was 'train': the digits after a separator ended the name, so
    split = "train" read its rows with train.parquet's, and without split = ... it was no split of its own. A word
    after the shard number names a longer split either way; digits with no word after them stay a shard number
    (train_0_of_2.parquet + train_1_of_2.parquet: 'train')."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "ds" / "train.parquet", "train", 2)
    _write(root / "ds" / hard, "hard", 1)
    name = hard.split("/")[0].removesuffix(".parquet")
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"train"}
    assert f"named for the longer split(s) ['{name}']" in caplog.text
    assert _configs(read_split("hf_datasets", root, path="ds", split=name, cache_dir=cache)) == {"hard"}
    _write(root / "alone" / hard, "hard", 1)
    _write(root / "alone" / "test.parquet", "test", 1)
    with pytest.raises(ValueError, match=rf"hold the splits \['test', '{name}'\]; set split"):
        read_split("hf_datasets", root, path="alone", cache_dir=cache)
    for shard in ("train_0_of_2.parquet", "train_1_of_2.parquet"):
        _write(root / "shards" / shard, "train", 1)
    assert len(read_split("hf_datasets", root, path="shards", split="train", cache_dir=cache).examples) == 2
    assert len(read_split("hf_datasets", root, path="shards", cache_dir=cache).examples) == 2   # one split


def test_longer_named_files_left_out_or_refused_say_that_datasets_reads_them_and_are_read_joined_with_plus(
        tmp_path, caplog):
    """train.parquet + train_extra.parquet: split = "train" reads train.parquet alone (train_extra taken for a split
    of its own, as test_hard is beside test), where ``datasets`` (5.2.0: any name holding the split's word followed
    by [-._ 0-9]) reads both as 'train'. The note said nothing of that, and no split read both: now the note says
    so and names split = "train+train_extra" (``datasets``' own syntax for joined splits), which reads both; the
    refusal of several longer names (train_images beside train_captions) names the joined split too. A hub shard
    left out (train_hard-00000-of-00001) is no such case: ``datasets`` keeps it apart too."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "ds" / "train.parquet", "train", 2)
    _write(root / "ds" / "train_extra.parquet", "extra", 1)
    _write(root / "ds" / "test.parquet", "test", 1)
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="ds", split="train", cache_dir=cache)
    assert len(split.examples) == 2 and _configs(split) == {"train"}
    assert "split 'train' is read without the file(s) ['train_extra.parquet'], named for the longer split(s) " \
           "['train_extra']" in caplog.text
    assert "datasets' load_dataset reads a plain file or folder so named into 'train'" in caplog.text
    assert 'set split = "train+train_extra"' in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        split = read_split("hf_datasets", root, path="ds", split="train+train_extra", cache_dir=cache)
    assert len(split.examples) == 3 and _configs(split) == {"train", "extra"}
    assert "read without" not in caplog.text   # (train_extra is read, by the second part)
    both = read_split("hf_datasets", root, path="ds", split="train_extra+train", cache_dir=cache)
    assert len(both.examples) == 3
    with pytest.raises(ValueError, match=r"split 'train\+' joins splits with '\+', and one of them is empty; write "
                                         r"the splits' names between the '\+' signs, e.g. split = \"train\+test\""):
        read_split("hf_datasets", root, path="ds", split="train+", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r"no parquet file of split 'nope'"):
        read_split("hf_datasets", root, path="ds", split="train+nope", cache_dir=cache)
    for name in ("train_images.parquet", "train_captions.parquet"):
        _write(root / "parts" / name, name[6:-8], 1)
    with pytest.raises(ValueError, match=r"named for the splits \['train_captions', 'train_images'\].*set split to one "
                                         r"of them, e.g. split = \"train_captions\"; or, where they are parts of one "
                                         r"split \(datasets' load_dataset reads them all as 'train'\), join them: "
                                         r"split = \"train_captions\+train_images\""):
        read_split("hf_datasets", root, path="parts", split="train", cache_dir=cache)
    joined = read_split("hf_datasets", root, path="parts", split="train_captions+train_images", cache_dir=cache)
    assert _configs(joined) == {"images", "captions"}
    _write(root / "hub" / "data" / "train-00000-of-00001.parquet", "train", 1)
    _write(root / "hub" / "data" / "train_hard-00000-of-00001.parquet", "hard", 1)
    caplog.clear()
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        assert _configs(read_split("hf_datasets", root, path="hub", split="train", cache_dir=cache)) == {"train"}
    assert "named for the longer split(s) ['train_hard']" in caplog.text and "load_dataset" not in caplog.text


def test_a_joined_split_takes_spaces_refuses_a_repeat_notes_per_part_and_names_a_plus_in_a_file_name(tmp_path, caplog):
    """split = "train + train_extra" (spaces around '+', as datasets' ReadInstruction takes them) read a split named
    'train ' and refused it: "no parquet file of split 'train '". "train+train" read train's files once, unsaid,
    where datasets' load_dataset reads them twice over: refused, naming the split once. The note of a file left out
    of a joined split looked the joined name up among datasets' split words ('train+test' is none), so it said
    "they may be parts of 'train+test'": it speaks of the part that left the file out. A file named with a '+'
    (train+extra.parquet) read by split = "train+extra" was refused as "no parquet file of split 'train'" alone:
    the refusal says that '+' joins splits and that a '+' in a file's name is no part of a split's."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "ds" / "train.parquet", "train", 2)
    _write(root / "ds" / "train_extra.parquet", "extra", 1)
    _write(root / "ds" / "test.parquet", "test", 1)
    spaced = read_split("hf_datasets", root, path="ds", split="train + train_extra", cache_dir=cache)
    assert len(spaced.examples) == 3 and _configs(spaced) == {"train", "extra"}
    for path in ("ds", "ds/train.parquet"):
        with pytest.raises(ValueError, match=r"split 'train\+train' names the split\(s\) \['train'\] more than once; "
                                             r"datasets' load_dataset reads .* twice over .* name each split once, "
                                             r"e.g. split = \"train\""):
            read_split("hf_datasets", root, path=path, split="train+train", cache_dir=cache)
    with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
        both = read_split("hf_datasets", root, path="ds", split="test+train", cache_dir=cache)
    assert _configs(both) == {"train", "test"}
    assert "split 'train' of 'test+train' is read without the file(s) ['train_extra.parquet']" in caplog.text
    assert "datasets' load_dataset reads a plain file or folder so named into 'train'" in caplog.text
    assert 'set split = "test+train+train_extra"' in caplog.text
    _write(root / "plus" / "train+extra.parquet", "plus", 1)
    _write(root / "plus" / "test.parquet", "test", 1)
    for split in ("train+extra", "train"):
        with pytest.raises(FileNotFoundError, match=r"no parquet file of split 'train' .*: a '\+' in a file or "
                                                    r"folder's own name \(train\+extra.parquet\) is no part of a "
                                                    r"split's name; rename it \(train_extra.parquet\)"):
            read_split("hf_datasets", root, path="plus", split=split, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r"split 'train\+nope' joins the splits \['train', 'nope'\] with '\+'"):
        read_split("hf_datasets", root, path="ds", split="train+nope", cache_dir=cache)


def test_a_joined_split_of_a_saved_dataset_is_refused_saying_plus_reads_parquet_and_the_fix_reads_it(tmp_path):
    """split = "train+extra" of a save_to_disk folder holding both was refused as "split 'train+extra' not found;
    the saved dataset has splits ['train', 'extra']" (a one-Dataset folder: "has no split name"), which reads as if
    '+' were unknown: it says that '+' joins a parquet folder's splits, and the fix it names reads them."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    dd = datasets.DatasetDict({name: datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 12), (9, 9, 9))],
                                                                 "caption": [f"{name} picture"]})
                               for name in ("train", "extra", "test")})
    dd.save_to_disk(str(root / "saved"))
    dd["train"].save_to_disk(str(root / "one"))
    for path in ("saved", "one"):
        with pytest.raises(ValueError, match=r"split 'train \+ extra' joins the splits \['train', 'extra'\] with '\+', "
                                             r"which reads a folder of parquet files .*save_to_disk folder's splits "
                                             r"are read one at a time.*to_parquet"):
            read_split("hf_datasets", root, path=path, split="train + extra", cache_dir=cache)
    for name in ("train", "extra", "test"):
        dd[name].to_parquet(str(root / "my_data" / f"{name}.parquet"))
    joined = read_split("hf_datasets", root, path="my_data", split="train+extra", cache_dir=cache)
    assert _configs(joined) == {"train", "extra"}


def test_a_folder_gives_the_split_a_file_of_its_name_gives(tmp_path, caplog):
    """The folder rule kept a folder's whole name less a shard number right after the split's (train0/), while the
    file rule also drops a shard number after a word and ends at a word that names no split: train_hard_0/ was
    'train_hard_0' where train_hard_0.parquet is 'train_hard' (so train_hard_0/ + train_hard_1/ were two splits,
    refused, and their files one), and train_part_0/ + train_part_1/ two splits where the files are 'train'. The
    file rule read train_hard0.parquet as 'train' (the word 'hard0' not seen): read into split "train" beside
    train.parquet, where the folder train_hard0/ was left out. A year after a word stays a split either way."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    for name in ("train_hard_0", "train_hard_1"):
        _write(root / "folders" / name / "0.parquet", "hard", 1)
        _write(root / "files" / f"{name}.parquet", "hard", 1)
    _write(root / "folders" / "test" / "0.parquet", "test", 1)
    _write(root / "files" / "test.parquet", "test", 1)
    for path in ("folders", "files"):
        assert len(read_split("hf_datasets", root, path=path, split="train", cache_dir=cache).examples) == 2
        assert len(read_split("hf_datasets", root, path=path, split="train_hard", cache_dir=cache).examples) == 2
    for name in ("train_part_0", "train_part_1"):
        _write(root / "parts" / name / "0.parquet", "train", 1)
    assert len(read_split("hf_datasets", root, path="parts", cache_dir=cache).examples) == 2   # one split, 'train'
    for hard in ("train_hard0.parquet", "train_hard0/0.parquet"):
        folder = root / hard.split("/")[0].replace(".", "_")
        _write(folder / "train.parquet", "train", 2)
        _write(folder / hard, "hard", 1)
        caplog.clear()
        with caplog.at_level("INFO", logger="mtl_lora_vl.data.hf_parquet"):
            split = read_split("hf_datasets", root, path=folder.name, split="train", cache_dir=cache)
        assert _configs(split) == {"train"} and "named for the longer split(s) ['train_hard0']" in caplog.text
    for hard in ("train_hard_2014.parquet", "train_hard_2014/0.parquet"):   # (a year: the split's, not a shard)
        folder = root / f"year_{hard.split('/')[0].replace('.', '_')}"
        _write(folder / hard, "hard", 1)
        _write(folder / hard.replace("2014", "2017"), "hard", 1)
        with pytest.raises(ValueError, match=r"\['train_hard_2014', 'train_hard_2017'\]"):
            read_split("hf_datasets", root, path=folder.name, split="train", cache_dir=cache)


def test_shards_of_different_columns_are_refused_naming_the_files_and_columns_not_a_raw_cast_error(tmp_path):
    """Parquet files read together as one table whose columns differ (two tables in one folder, named as shards of
    one split) raised datasets' bare DatasetGenerationError ("An error occurred while generating the dataset", its
    CastError only in the chain); refused naming the two files and the columns each has alone, or the types."""
    root, cache = tmp_path / "root", str(tmp_path / "cache")
    _write(root / "mixed" / "train-00000-of-00002.parquet", "en")
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (9, 9))], "text": ["a picture"]}).to_parquet(
        str(root / "mixed" / "train-00001-of-00002.parquet"))
    for split in ("train", None):
        with pytest.raises(ValueError, match=r"the parquet files read as one table have different columns \(2 kinds "
                                             r"among 2 files\): .*train-00000-of-00002.parquet has columns \['image', "
                                             r"'caption'\], .*train-00001-of-00002.parquet has \['image', 'text'\] "
                                             r"\(only train-00000-of-00002.parquet has \['caption'\]; only "
                                             r"train-00001-of-00002.parquet has \['text'\]\)"):
            read_split("hf_datasets", root, path="mixed", split=split, cache_dir=cache)
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (9, 9))], "caption": [["a", "b"]]}).to_parquet(
        str(root / "mixed" / "train-00001-of-00002.parquet"))
    with pytest.raises(ValueError, match=r"have different columns .*their types differ: 'caption' \(string / "
                                         r"list<element: string>\)"):
        read_split("hf_datasets", root, path="mixed", split="train", cache_dir=cache)
