"""MSD datalists, case ids, folds and label fractions."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.conftest import make_msd_folder
from volmae.data.datalist import (
    Datalist,
    case_id,
    inner_fold,
    label_fraction,
    load_datalist,
    load_image_list,
    load_msd_datalist,
    make_folds,
    pretraining_items,
    split_fold,
)
from volmae.errors import DataError

# --------------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def hippo(msd_hippocampus) -> Datalist:
    return load_msd_datalist(msd_hippocampus)


@pytest.mark.realdata
def test_real_hippocampus_datalist(hippo, msd_hippocampus):
    assert len(hippo.items) == 208
    assert hippo.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert hippo.num_classes == 3 and hippo.in_channels == 1
    assert hippo.modality == {0: "MRI"} and hippo.name == "Hippocampus"
    assert hippo.root == msd_hippocampus and hippo.unlabeled == []
    cases = [it["case"] for it in hippo.items]
    assert len(set(cases)) == 208 and all(re.fullmatch(r"hippocampus_\d{3}", c) for c in cases)
    for it in hippo.items:
        image, label = Path(it["image"]), Path(it["label"])
        assert image.is_absolute() and label.is_absolute()
        assert image.is_file() and label.is_file()
        assert image.parent.name == "imagesTr" and label.parent.name == "labelsTr"
        assert image.name == label.name == f"{it['case']}.nii.gz"


@pytest.mark.realdata
def test_real_hippocampus_splits(hippo):
    assert hippo.splits is not None and len(hippo.splits) == 5
    flat = [c for fold in hippo.splits for c in fold]
    assert len(flat) == len(set(flat)) == 208
    assert set(flat) == {it["case"] for it in hippo.items}
    for k in range(5):
        train, val = split_fold(hippo, k)
        assert [it["case"] for it in val] == [it["case"] for it in hippo.items if it["case"] in set(hippo.splits[k])]
        assert len(train) + len(val) == 208
        assert not {it["case"] for it in train} & {it["case"] for it in val}
    with pytest.raises(DataError, match="fold=5"):
        split_fold(hippo, 5)


@pytest.mark.realdata
def test_real_by_case(hippo):
    picked = hippo.by_case(["hippocampus_003", "hippocampus_001"])
    assert [it["case"] for it in picked] == ["hippocampus_003", "hippocampus_001"]
    with pytest.raises(DataError, match="hippocampus_999"):
        hippo.by_case(["hippocampus_001", "hippocampus_999"])


# --------------------------------------------------------------------------------------------------- case ids


@pytest.mark.parametrize(
    "path, expected",
    [
        ("./imagesTr/hippocampus_001.nii.gz", "hippocampus_001"),
        ("/data/x/la_003.nii", "la_003"),
        ("scan.NII.GZ", "scan"),
        ("../../secret.nii.gz", "secret"),
        ("a b/c d (1).nii.gz", "c_d_1"),
        ("..", "case"),
        ("foo/..", "case"),
        ("", "case"),
        ("..\\..\\evil.nii.gz", "evil"),
        (["./imagesTr/t1_007.nii.gz", "./imagesTr/t2_007.nii.gz"], "t1_007"),
        (Path("x/y/ct.v2.nii.gz"), "ct.v2"),
    ],
)
def test_case_id_examples(path, expected):
    assert case_id(path) == expected


HOSTILE = [
    "../../../../etc/passwd",
    "..",
    ".",
    "/",
    "...nii.gz",
    "a/../../b.nii.gz",
    "..%2F..%2Fx.nii.gz",
    "~/.ssh/id_rsa",
    "name\x00with\nnul.nii.gz",
    "ünïcødé/ßcan.nii.gz",
    "C:\\Windows\\..\\..\\x.nii",
    " .. ",
    "-rf .nii.gz",
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_case_id_cannot_escape_an_output_folder(raw, tmp_path):
    cid = case_id(raw)
    assert cid and re.fullmatch(r"[A-Za-z0-9._-]+", cid)
    assert "/" not in cid and "\\" not in cid and cid not in (".", "..") and not cid.startswith(".")
    assert (tmp_path / cid).resolve().parent == tmp_path.resolve()
    assert (tmp_path / f"{cid}.nii.gz").resolve().parent == tmp_path.resolve()


def test_case_id_fuzz(tmp_path):
    rng = random.Random(0)
    alphabet = "./\\ab_-. \x00\n:%~"
    for _ in range(500):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        cid = case_id(raw)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", cid), (raw, cid)
        assert cid not in (".", "..") and not cid.startswith(".")
        assert (tmp_path / cid).resolve().parent == tmp_path.resolve()


# --------------------------------------------------------------------------------------------------- folds


CASES = [f"c{i:02d}" for i in range(23)]


def test_make_folds_disjoint_cover_balanced():
    folds = make_folds(CASES, 5, seed=3)
    assert len(folds) == 5
    flat = [c for f in folds for c in f]
    assert sorted(flat) == sorted(CASES) and len(flat) == len(set(flat))
    sizes = sorted(len(f) for f in folds)
    assert sizes[-1] - sizes[0] <= 1 and sum(sizes) == 23


def test_make_folds_deterministic_and_order_independent():
    a = make_folds(CASES, 4, seed=1)
    assert a == make_folds(CASES, 4, seed=1)
    shuffled = CASES[:]
    random.Random(9).shuffle(shuffled)
    assert make_folds(shuffled, 4, seed=1) == a
    assert make_folds(CASES, 4, seed=2) != a
    assert a != [CASES[i::4] for i in range(4)]  # actually shuffled


@pytest.mark.parametrize("n", [0, 1, 24])
def test_make_folds_bad_count(n):
    with pytest.raises(DataError, match=f"n_folds={n}"):
        make_folds(CASES, n)


def test_too_few_cases_for_the_default_folds_ask_for_a_splits_file():
    with pytest.raises(DataError, match="3 cases are too few for the default 5-fold split; write a splits.json"):
        split_fold(_synthetic_datalist(3), 0)
    assert len(split_fold(_synthetic_datalist(3, splits=[["c0"], ["c1"], ["c2"]]), 2)[0]) == 2


def _synthetic_datalist(n=10, splits=None) -> Datalist:
    items = [{"image": f"/x/c{i}.nii.gz", "label": f"/y/c{i}.nii.gz", "case": f"c{i}"} for i in range(n)]
    return Datalist(items, {0: "bg", 1: "fg"}, {0: "CT"}, splits=splits)


def test_split_fold_without_splits_uses_seeded_folds():
    dl = _synthetic_datalist(10)
    folds = make_folds([it["case"] for it in dl.items], 5, seed=0)
    seen = []
    for k in range(5):
        train, val = split_fold(dl, k)
        assert {it["case"] for it in val} == set(folds[k])
        assert {it["case"] for it in train} == {it["case"] for it in dl.items} - set(folds[k])
        seen += [it["case"] for it in val]
    assert sorted(seen) == sorted(it["case"] for it in dl.items)
    train3, val3 = split_fold(dl, 1, n_folds=3, seed=4)
    assert {it["case"] for it in val3} == set(make_folds([it["case"] for it in dl.items], 3, seed=4)[1])
    assert len(train3) + len(val3) == 10


def test_split_fold_uses_splits_and_checks_range():
    dl = _synthetic_datalist(4, splits=[["c0", "c3"], ["c1", "c2"]])
    train, val = split_fold(dl, 0)
    assert [it["case"] for it in val] == ["c0", "c3"] and [it["case"] for it in train] == ["c1", "c2"]
    for bad in (-1, 2):
        with pytest.raises(DataError, match=f"fold={bad}"):
            split_fold(dl, bad)
    with pytest.raises(DataError, match="held-out"):
        split_fold(_synthetic_datalist(4, splits=[["c0", "c1", "c2", "c3"], []]), 0)


def test_inner_fold_stays_on_the_training_side():
    dl = _synthetic_datalist(6, splits=[["c0", "c1"], ["c2", "c3"], ["c4", "c5"]])
    train, val = inner_fold(dl, 0, 2)
    assert [it["case"] for it in train] == ["c2", "c3"] and [it["case"] for it in val] == ["c4", "c5"]
    with pytest.raises(DataError, match="inner fold 0 is the held-out fold 0"):
        inner_fold(dl, 0, 0)
    with pytest.raises(DataError, match=r"inner fold 3: the datalist has folds 0..2"):
        inner_fold(dl, 0, 3)


# --------------------------------------------------------------------------------------------------- label fraction


ITEMS = [{"case": f"k{i:03d}", "image": f"/i/{i}.nii.gz"} for i in range(50)]


@pytest.mark.parametrize("fraction, n", [(1.0, 50), (0.5, 25), (0.1, 5), (0.25, 12), (0.001, 1)])
def test_label_fraction_size(fraction, n):
    assert len(label_fraction(ITEMS, fraction)) == n


def test_label_fraction_deterministic_subset_in_order():
    a = label_fraction(ITEMS, 0.3, seed=5)
    assert a == label_fraction(ITEMS, 0.3, seed=5)
    assert all(it in ITEMS for it in a)
    positions = [ITEMS.index(it) for it in a]
    assert positions == sorted(positions)  # the datalist's order is kept
    assert label_fraction(ITEMS, 0.3, seed=6) != a
    assert a != ITEMS[:15]  # a random, not a leading, subset


def test_label_fraction_does_not_depend_on_item_order_and_nests():
    shuffled = ITEMS[:]
    random.Random(1).shuffle(shuffled)
    cases = {it["case"] for it in label_fraction(ITEMS, 0.4, seed=2)}
    assert {it["case"] for it in label_fraction(shuffled, 0.4, seed=2)} == cases
    small = {it["case"] for it in label_fraction(ITEMS, 0.1, seed=2)}
    assert small < cases  # smaller fractions are subsets of larger ones (same seed)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, 2])
def test_label_fraction_range(fraction):
    with pytest.raises(DataError, match="label fraction"):
        label_fraction(ITEMS, fraction)


# --------------------------------------------------------------------------------------------------- MSD folders


def test_synthetic_msd_folder(msd_folder):
    dl = load_msd_datalist(msd_folder)
    assert [it["case"] for it in dl.items] == [f"case_{i:03d}" for i in range(6)]
    assert all(Path(it["image"]).is_file() and Path(it["label"]).is_file() for it in dl.items)
    assert dl.num_classes == 3 and dl.in_channels == 1 and dl.name == "Synthetic" and dl.splits is None


def test_multichannel_unlabeled_and_splits(tmp_path):
    root = make_msd_folder(
        tmp_path / "t",
        n=3,
        modality={"0": "FLAIR", "1": "T1c"},
        test=["./imagesTs/u1.nii.gz", {"image": "./imagesTs/u2.nii.gz"}, 5],
    )
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0] = {"image": ["./imagesTr/a_flair.nii.gz", "./imagesTr/a_t1c.nii.gz"], "label": ""}
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "splits.json").write_text(json.dumps({"folds": [["a_flair"], ["case_001", "case_002"]]}))
    dl = load_msd_datalist(root)
    assert dl.in_channels == 2
    first = dl.items[0]
    assert first["case"] == "a_flair" and "label" not in first  # empty label string = unlabeled
    assert first["image"] == [str((root / "imagesTr" / n).resolve()) for n in ("a_flair.nii.gz", "a_t1c.nii.gz")]
    assert [u["case"] for u in dl.unlabeled] == ["u1", "u2"]
    assert dl.splits == [["a_flair"], ["case_001", "case_002"]]


def test_labels_present_marks_what_each_case_annotates(tmp_path):
    root = make_msd_folder(tmp_path / "t", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    cases = [c["image"].split("/")[-1].removesuffix(".nii.gz") for c in meta["training"]]
    for present, error in [
        ({cases[0]: [0, "2"]}, None),
        ({"nobody": [1]}, "names cases not in 'training'"),
        ({cases[0]: ["liver"]}, "must map case ids to lists of label values"),
        ([1, 2], "must map case ids"),
    ]:
        (root / "dataset.json").write_text(json.dumps({**meta, "labels_present": present}))
        if error:
            with pytest.raises(DataError, match=error):
                load_msd_datalist(root)
            continue
        dl = load_msd_datalist(root)
        assert dl.annotated == {cases[0]: [0, 2]} and all("labels_present" not in it for it in dl.items)
    (root / "dataset.json").write_text(json.dumps(meta))
    assert load_msd_datalist(root).annotated == {}  # fully annotated: every class scored everywhere


def test_regions_are_read_and_checked(tmp_path):
    root = make_msd_folder(tmp_path / "t", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    for regions, error in [({"TC": [2, 3], "WT": [1, 2, 3]}, None), ({"TC": []}, "'regions': region 'TC'")]:
        (root / "dataset.json").write_text(json.dumps({**meta, "regions": regions}))
        if error:
            with pytest.raises(DataError, match=error):
                load_msd_datalist(root)
        else:
            assert load_msd_datalist(root).regions == regions


def test_real_ircadb_lists_its_annotated_organs(ircadb_ct):
    dl = load_msd_datalist(ircadb_ct)
    assert dl.annotated["ircadb_017"] == [0, 6, 8, 9, 10]  # no spleen or kidney masks in case 17
    assert set(dl.annotated) == {it["case"] for it in dl.items}


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found") as info:
        load_msd_datalist(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(info.value)


def test_missing_dataset_json(tmp_path):
    (tmp_path / "task").mkdir()
    with pytest.raises(DataError, match="no dataset.json") as info:
        load_msd_datalist(tmp_path / "task")
    assert str(tmp_path / "task" / "dataset.json") in str(info.value)


def test_dataset_json_not_json(msd_folder):
    (msd_folder / "dataset.json").write_text("{'training': [")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_msd_datalist(msd_folder)
    assert str(msd_folder / "dataset.json") in str(info.value)


def test_dataset_json_binary(msd_folder):
    (msd_folder / "dataset.json").write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(DataError, match="not valid JSON"):
        load_msd_datalist(msd_folder)


@pytest.mark.parametrize(
    "training, match",
    [
        ([], "is empty"),
        (None, "no 'training' list"),
        ({"image": "a"}, "no 'training' list"),
        ([{"label": "x.nii.gz"}], "entry 0 has no 'image'"),
        (["a.nii.gz"], "entry 0 has no 'image'"),
    ],
    ids=["empty", "absent", "dict", "no-image", "string-entry"],
)
def test_bad_training_lists(msd_folder, training, match):
    meta = json.loads((msd_folder / "dataset.json").read_text())
    if training is None:
        del meta["training"]
    else:
        meta["training"] = training
    (msd_folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=match) as info:
        load_msd_datalist(msd_folder)
    assert str(msd_folder / "dataset.json") in str(info.value)


def test_duplicate_case_ids(msd_folder):
    meta = json.loads((msd_folder / "dataset.json").read_text())
    meta["training"].append({"image": "./other/case_002.nii.gz", "label": "./labelsTr/case_002.nii.gz"})
    (msd_folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="duplicate case ids") as info:
        load_msd_datalist(msd_folder)
    assert "case_002" in str(info.value)


def test_bad_labels_mapping(msd_folder):
    meta = json.loads((msd_folder / "dataset.json").read_text())
    meta["labels"] = {"background": "0"}
    (msd_folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'labels'"):
        load_msd_datalist(msd_folder)


def test_bad_splits_file(msd_folder):
    (msd_folder / "splits.json").write_text("[not json")
    with pytest.raises(DataError, match="splits") as info:
        load_msd_datalist(msd_folder)
    assert str(msd_folder / "splits.json") in str(info.value)


def test_other_dataset_json_name(msd_folder):
    (msd_folder / "dataset.json").rename(msd_folder / "task.json")
    assert len(load_msd_datalist(msd_folder, "task.json").items) == 6
    with pytest.raises(DataError, match="no dataset.json"):
        load_msd_datalist(msd_folder)


def test_test_entry_without_image(msd_folder):
    meta = json.loads((msd_folder / "dataset.json").read_text())
    meta["test"] = ["./imagesTs/u1.nii.gz", {"label": "./labelsTs/u2.nii.gz"}]
    (msd_folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="test entry 1 has no 'image'") as info:
        load_msd_datalist(msd_folder)
    assert str(msd_folder / "dataset.json") in str(info.value)


# --------------------------------------------------------------------------------------------- image-only lists


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_image_folder_nested_same_names_stay_distinct(tmp_path):
    for p in ("a/ct.nii.gz", "b/ct.nii.gz", "b/sub/x.nii", "b/notes.txt"):
        _touch(tmp_path / "scans" / p)
    dl = load_datalist(tmp_path / "scans")
    assert dl.items == [] and dl.in_channels == 1 and dl.num_classes == 0
    assert [it["case"] for it in dl.unlabeled] == ["a_ct", "b_ct", "b_sub_x"]
    assert all(Path(it["image"]).is_absolute() for it in dl.unlabeled)
    assert pretraining_items(dl, fold=0) == dl.unlabeled  # nothing labeled: nothing to hold out


def test_list_files_txt_csv_json(tmp_path):
    imgs = [_touch(tmp_path / "d" / f"s{i}.nii.gz") for i in range(3)]
    (tmp_path / "d" / "list.txt").write_text("# my scans\ns0.nii.gz\n\n" + f"{imgs[1]}\n s2.nii.gz \n")
    (tmp_path / "d" / "list.csv").write_text("patient,image\np0,s0.nii.gz\np1,s1.nii.gz\np2,s2.nii.gz\n")
    (tmp_path / "d" / "list.json").write_text(json.dumps({"training": [{"image": "s0.nii.gz"}], "test": ["s1.nii.gz"]}))
    (tmp_path / "d" / "plain.json").write_text(json.dumps(["s2.nii.gz"]))
    want = [str(p.resolve()) for p in imgs]
    for name, n in (("list.txt", 3), ("list.csv", 3), ("list.json", 2), ("plain.json", 1)):
        dl = load_datalist(tmp_path / "d" / name)
        assert [it["image"] for it in dl.unlabeled] == (want[:n] if n > 1 else want[2:]), name


def test_ten_thousand_volume_list(tmp_path):
    lines = [f"site{i % 7}/patient{i:05d}/ct.nii.gz" for i in range(10_000)]
    (tmp_path / "big.txt").write_text("\n".join(lines))
    dl = load_image_list(tmp_path / "big.txt")  # paths only: nothing is read until a loader asks
    assert len(dl.unlabeled) == 10_000 and len({it["case"] for it in dl.unlabeled}) == 10_000
    assert dl.unlabeled[12]["case"] == "site5_patient00012_ct"


def test_multichannel_entries(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps([{"image": ["a_t1.nii.gz", "a_t2.nii.gz"]}]))
    dl = load_image_list(tmp_path / "l.json")
    assert dl.in_channels == 2 and len(dl.unlabeled[0]["image"]) == 2


def test_json_entries_may_name_their_case(tmp_path):
    entries = [{"image": "/site1/img_001.nii.gz", "case": "site1_001"}, {"image": "/site2/img_001.nii.gz"}]
    (tmp_path / "l.json").write_text(json.dumps(entries))
    assert [it["case"] for it in load_image_list(tmp_path / "l.json").unlabeled] == ["site1_001", "img_001"]


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("e.txt", "# nothing\n", "the image list is empty"),
        ("d.txt", "a/x.nii.gz\nb/../a/x.nii.gz\n", "same case id"),
        ("j.json", "{not json", "not valid JSON"),
        ("k.json", json.dumps([{"label": "x"}]), "entry 0 names no image"),
        ("n.json", json.dumps(5), "expected a list of images"),
    ],
)
def test_image_list_errors(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        load_image_list(tmp_path / name)


def test_missing_list_and_msd_dispatch(tmp_path, msd_folder):
    with pytest.raises(DataError, match="no such image list"):
        load_image_list(tmp_path / "nope.txt")
    assert len(load_datalist(msd_folder).items) == 6
    assert len(load_datalist(msd_folder / "dataset.json").items) == 6
