"""The weights registry (volmae.artifact.hub) against a real HTTP server on 127.0.0.1: a good download, a transfer
cut short and resumed with Range, a server without Range, a wrong checksum, no network, the proxy settings, offline
installs (.pt, .zip), $VOLMAE_HOME, download on first use and VOLMAE_OFFLINE; and MONAI's own download_large_files
on the same large_files.yml."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.artifact.weights import BUNDLES, DATA, free_port, make_bundle
from volmae.artifact import hub
from volmae.artifact.bundles import install_weights, open_model
from volmae.errors import ConfigError, DownloadError


def _target(env: Path, name: str) -> Path:
    return env / "home" / "bundles" / name / "models" / "model.pt"


def test_good_download_is_checked_and_flips_the_status(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url)
    info = hub.model_info(root)
    assert (info.status, info.size, info.weights) == ("downloadable", len(DATA), None)
    assert info.entry.sha256 == hashlib.sha256(DATA).hexdigest() and info.license.startswith("CC-BY-SA-4.0")
    path = hub.download(root, progress=False)
    assert path == _target(hub_env, "tiny") and path.read_bytes() == DATA
    assert not path.with_name("model.pt.part").exists()
    assert hub.model_info(root).status == "installed" and hub.installed_weights(root) == path
    assert hub.download(root) == path and len(server.requests) == 1  # installed: nothing fetched again
    assert server.requests[0] == ("/releases/model.pt", None)


def test_a_transfer_cut_short_keeps_the_part_and_resumes_with_range(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url)
    server.mode = "truncate"
    with pytest.raises(DownloadError, match="cut short at 131072 of 262144 bytes.*run the same command again"):
        hub.download(root, progress=False)
    target = _target(hub_env, "tiny")
    part = target.with_name("model.pt.part")
    assert not target.exists() and part.stat().st_size == len(DATA) // 2
    assert hub.model_info(root).status == "downloadable"
    assert hub.download(root, progress=False).read_bytes() == DATA
    assert server.requests[-1][1] == f"bytes={len(DATA) // 2}-" and not part.exists()


def test_a_server_without_range_restarts_and_a_bad_part_is_fetched_again(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url)
    part = _target(hub_env, "tiny").with_name("model.pt.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:1000])
    server.mode = "norange"
    assert hub.download(root, progress=False).read_bytes() == DATA  # 200 to a Range request: from the start
    _target(hub_env, "tiny").unlink()
    part.write_bytes(b"x" * 1000)  # a corrupt part: the resumed file fails its checksum, one fresh download
    server.mode = "ok"
    assert hub.download(root, progress=False).read_bytes() == DATA
    assert [r for _, r in server.requests[-2:]] == ["bytes=1000-", None]


def test_wrong_checksum_leaves_nothing(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(DownloadError, match="checksum mismatch.*removed and nothing installed") as err:
        hub.download(root, progress=False)
    assert "\n" not in str(err.value)
    assert not list((hub_env / "home" / "bundles" / "tiny" / "models").iterdir())


def test_no_network_names_the_offline_install(hub_env):
    root = make_bundle(hub_env, "tiny", f"http://127.0.0.1:{free_port()}/model.pt")
    with pytest.raises(DownloadError, match="cannot reach 127.0.0.1") as err:
        hub.download(root, progress=False)
    assert "volmae-download tiny --from-file" in str(err.value) and "\n" not in str(err.value)
    assert not _target(hub_env, "tiny").exists()


def test_the_environment_proxy_is_used(hub_env, server, monkeypatch):
    """The registry's host does not exist: only the proxy (our server) can answer, and it sees the absolute URL."""
    root = make_bundle(hub_env, "tiny", "http://weights.invalid/releases/model.pt")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.server_address[1]}")
    proxies = [h for h in hub.opener().handlers if type(h).__name__ == "ProxyHandler"]
    assert proxies and proxies[0].proxies["http"] == f"http://127.0.0.1:{server.server_address[1]}"
    assert hub.download(root, progress=False).read_bytes() == DATA
    assert server.requests[0][0] == "http://weights.invalid/releases/model.pt"


def test_no_proxy_bypasses_the_proxy(hub_env, server, monkeypatch):
    root = make_bundle(hub_env, "tiny", server.url)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # a dead proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert hub.download(root, progress=False).read_bytes() == DATA


def test_offline_install_from_pt_and_zip(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url)
    pt = hub_env / "copied.pt"
    pt.write_bytes(DATA)
    assert hub.install_from_file(root, pt).read_bytes() == DATA
    assert hub.model_info(root).status == "installed" and server.requests == []
    _target(hub_env, "tiny").unlink()
    archive = hub_env / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny/models/model.pt", DATA)
        z.writestr("tiny/configs/metadata.json", "{}")
    assert install_weights(root, archive).read_bytes() == DATA
    bad = hub_env / "other.pt"
    bad.write_bytes(DATA[:-1])
    _target(hub_env, "tiny").unlink()
    with pytest.raises(DownloadError, match=r"other.pt: checksum mismatch .*: not installed"):
        hub.install_from_file(root, bad)
    assert not list(_target(hub_env, "tiny").parent.iterdir())
    with zipfile.ZipFile(hub_env / "empty.zip", "w") as z:
        z.writestr("readme.txt", "no weights")
    with pytest.raises(ConfigError, match="a zip must hold one models/model.pt"):
        hub.install_from_file(root, hub_env / "empty.zip")


def test_offline_install_of_an_unreleased_bundle_is_checked_against_its_network(hub_env):
    root = make_bundle(hub_env, "plain")
    junk = hub_env / "junk.pt"
    junk.write_bytes(b"not torch")
    with pytest.raises(Exception, match="junk.pt: not a readable PyTorch file"):
        install_weights(root, junk)
    assert not _target(hub_env, "plain").exists()


def test_volmae_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VOLMAE_HOME", str(tmp_path / "h"))
    assert hub.volmae_home() == tmp_path / "h" and hub.home_weights(tmp_path / "b" / "x") == (
        tmp_path / "h" / "bundles" / "x" / "models" / "model.pt"
    )
    monkeypatch.delenv("VOLMAE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.volmae_home() == tmp_path / ".volmae"
    monkeypatch.setenv("HOME", "/")  # a container's unusable home: a temporary folder
    assert hub.volmae_home().parent == Path(__import__("tempfile").gettempdir())


def test_weights_in_the_bundle_folder_come_first(hub_env, server):
    root = make_bundle(hub_env, "tiny", server.url)
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"shipped")
    info = hub.model_info(root)
    assert (info.status, info.weights, info.size) == ("installed", root / "models" / "model.pt", 7)
    assert hub.ensure_weights(root) == root / "models" / "model.pt" and server.requests == []


def test_first_use_downloads_with_one_line_unless_offline(hub_env, server, capsys, monkeypatch):
    make_bundle(hub_env, "tiny", server.url)
    monkeypatch.setenv("VOLMAE_OFFLINE", "1")
    with pytest.raises(DownloadError, match="VOLMAE_OFFLINE is set; to install offline.*--from-file"):
        open_model(bundle="tiny")
    assert server.requests == []
    monkeypatch.delenv("VOLMAE_OFFLINE")
    with pytest.raises(Exception, match="not a readable PyTorch file"):  # fetched: fake bytes, not weights
        open_model(bundle="tiny")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("volmae: first use of bundle tiny: downloading its weights (262.1 KB)")
    assert _target(hub_env, "tiny").read_bytes() == DATA


def test_a_registry_entry_without_sha256_is_refused(hub_env):
    root = make_bundle(hub_env, "tiny")
    (root / "large_files.yml").write_text("large_files:\n- path: models/model.pt\n  url: https://example.org/m.pt\n")
    with pytest.raises(ConfigError, match="hash_type: sha256 and hash_val"):
        hub.registry_entry(root)


def test_monai_download_large_files_reads_the_shipped_and_generated_files(hub_env, server, monkeypatch):
    """MONAI passes each entry's keys to download_url: the shipped files (empty lists today) call it for nothing
    but their entries; a generated release entry downloads, sha256-checked by MONAI, into the bundle folder."""
    import monai.bundle.scripts as scripts

    calls = []
    with monkeypatch.context() as m:
        m.setattr(scripts, "download_url", lambda **kw: calls.append(kw))
        for name in ("hippocampus", "btcv", "brats"):
            entries = yaml.safe_load((BUNDLES / name / "large_files.yml").read_text())["large_files"]
            before = len(calls)
            scripts.download_large_files(bundle_path=str(BUNDLES / name))
            assert len(calls) - before == len(entries)
    assert all(set(kw) <= {"url", "filepath", "hash_val", "hash_type"} for kw in calls)
    root = make_bundle(hub_env, "tiny", server.url)
    scripts.download_large_files(bundle_path=str(root))
    assert (root / "models" / "model.pt").read_bytes() == DATA
    assert hub.model_info(root).status == "installed"
