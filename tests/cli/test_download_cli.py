"""volmae-download (--list, fetch, --from-file, one-line errors) and volmae-infer's answer when no model is named."""

from __future__ import annotations

from tests.artifact.weights import DATA, free_port, make_bundle
from tests.cli.conftest import assert_clean_error
from volmae.cli.download import main as download_main
from volmae.cli.infer import main as infer_main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = download_main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_fetch_and_list_again(hub_env, server, capsys):
    make_bundle(hub_env, "tiny", server.url)
    make_bundle(hub_env, "plain")
    rc, out, _ = _run(capsys, "--list")
    assert rc == 0
    header, *rows = out.splitlines()
    assert header.split() == ["name", "task", "status", "licence", "size"]
    row = {r.split()[0]: r for r in rows}
    assert "downloadable" in row["tiny"] and row["tiny"].endswith("262.1 KB") and "CC-BY-SA-4.0" in row["tiny"]
    assert "not released" in row["plain"] and row["plain"].endswith("-")
    assert {"hippocampus", "btcv", "brats"} <= set(row) and str(hub_env / "home") in out
    rc, out, _ = _run(capsys, "tiny", "-q")
    assert rc == 0 and "tiny: installed" in out and "sha256 checked" in out
    assert "installed" in {r.split()[0]: r for r in _run(capsys, "--list")[1].splitlines()}["tiny"]
    rc, out, _ = _run(capsys, "tiny")
    assert rc == 0 and "already installed" in out and len(server.requests) == 1


def test_from_file(hub_env, server, capsys):
    make_bundle(hub_env, "tiny", server.url)
    (hub_env / "m.pt").write_bytes(DATA)
    rc, out, _ = _run(capsys, "tiny", "--from-file", str(hub_env / "m.pt"))
    assert rc == 0 and "tiny: installed" in out and server.requests == []


def test_one_line_errors(hub_env, server, capsys):
    make_bundle(hub_env, "plain")
    make_bundle(hub_env, "tiny", server.url, sha256="0" * 64)
    make_bundle(hub_env, "offline", f"http://127.0.0.1:{free_port()}/model.pt")
    rc, _, err = _run(capsys, "hipocampus")
    assert_clean_error(rc, err, "volmae-download", "bundle 'hipocampus' not found", "did you mean 'hippocampus'?")
    rc, _, err = _run(capsys, "plain")
    assert_clean_error(
        rc, err, "volmae-download", "no trained weights are released for bundle plain",
        "python -m monai.bundle run training --config_file", "plain/configs/train.json --dataset_dir",
    )  # fmt: skip
    rc, _, err = _run(capsys, "offline", "-q")
    assert_clean_error(rc, err, "volmae-download", "cannot reach 127.0.0.1", "volmae-download offline --from-file")
    rc, _, err = _run(capsys, "tiny", "-q")
    assert_clean_error(rc, err, "volmae-download", "checksum mismatch", "nothing installed")
    assert not list((hub_env / "home" / "bundles" / "tiny" / "models").iterdir())
    server.mode = "truncate"
    make_bundle(hub_env, "cut", server.url)
    rc, _, err = _run(capsys, "cut", "-q")
    assert_clean_error(rc, err, "volmae-download", "cut short", "run the same command again to resume")
    rc, _, err = _run(capsys, "plain", "--from-file", str(hub_env / "missing.pt"))
    assert_clean_error(rc, err, "volmae-download", "missing.pt: file not found")


def test_volmae_infer_without_a_model_says_which_exist(hub_env, server, capsys, monkeypatch):
    make_bundle(hub_env, "tiny", server.url)
    installed = make_bundle(hub_env, "ready")
    (installed / "models").mkdir()
    (installed / "models" / "model.pt").write_bytes(b"weights")
    monkeypatch.chdir(hub_env)
    capsys.readouterr()
    rc = infer_main(["scan.nii.gz"])  # not even there: the model question is answered first
    message = assert_clean_error(
        rc, capsys.readouterr().err, "volmae-infer", "no model named: pass --bundle hippocampus (installed: ",
        "--bundle ready (installed: ", "--bundle tiny (downloads 262.1 KB on first use)", "--model FILE",
        "brats, btcv: no released weights (train: python -m monai.bundle run training",
        "list: volmae-download --list",
    )  # fmt: skip
    assert "btcv" not in message.split("no released weights")[0].split("--model")[0]  # never picked silently
    rc = infer_main(["--list-classes"])
    assert_clean_error(rc, capsys.readouterr().err, "volmae-infer", "no model named")
    assert server.requests == []
