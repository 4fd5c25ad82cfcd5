"""Every file of the bad-volume corpus (``tests/corpus.py``) through ``volmae-infer``: alone, one clear error naming
the file and nothing written; in a folder beside a good scan, reported per scan while the good one is written."""

from __future__ import annotations

import pytest

from tests.cli.conftest import assert_clean_error
from tests.corpus import CORPUS, write_corpus
from tests.inference.test_infer import model_checkpoint, scan
from volmae.cli.infer import main as infer_main
from volmae.data.paths import dataset_path
from volmae.inference.infer import InferConfig, infer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), dataset_path("msd_hippocampus"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", "hippocampus", roi=(40, 56, 40))


@pytest.mark.parametrize("released", [False, True], ids=["model-file", "released-bundle"])
@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_each_bad_file_alone_is_one_clear_error_and_nothing_written(kind, released, corpus, model, tmp_path, capsys):
    """(also through the hippocampus model that ships with volmae: the input is checked whatever the model)"""
    path, words = corpus[kind]
    out = tmp_path / "seg.nii.gz"
    which = ["--bundle", "hippocampus"] if released else ["--model", str(model)]
    rc = infer_main([str(path), *which, "-o", str(out), "--device", "cpu", "-q"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", str(path), *words)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_whole_corpus_beside_a_good_scan(corpus, model, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for path, _ in corpus.values():
        (folder / path.name).symlink_to(path)
    scan(folder / "good.nii.gz", shape=(36, 50, 35))
    done = infer(InferConfig([str(folder)], str(model), output=str(tmp_path / "out"), quiet=True, device="cpu"))
    by_case = {c.case: c for c in done}
    assert by_case.pop("good").status == "ok"
    assert len(by_case) == len(corpus) and all(c.status == "failed" for c in by_case.values())
    for path, words in corpus.values():
        (case,) = [c for c in by_case.values() if c.source == str(folder / path.name)]
        assert all(w in case.error for w in words), (path.name, case.error)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.nii.gz"]
