"""The weights registry: which bundles have trained weights, where they are, and fetching them (``volmae-download``,
and ``volmae-infer --bundle NAME`` on first use).

The source of truth is each bundle's ``large_files.yml``, in the MONAI model zoo's format, the file that
``python -m monai.bundle download_large_files --bundle_path BUNDLE`` reads::

    large_files:
    - path: models/model.pt
      url: "https://.../model.pt"
      hash_val: <sha256, 64 hex digits>
      hash_type: sha256

MONAI passes every key of an entry to ``download_url``, so an entry holds these four keys only. The weights' size
and licence are in the bundle's ``configs/metadata.json``, field ``weights`` (MONAI's metadata schema allows extra
fields)::

    "weights": {"license": "CC-BY-SA-4.0 (MSD data terms)", "files": {"models/model.pt": {"size": 21598617}}}

A bundle's weights are

- **installed** when ``models/model.pt`` is in the bundle's folder (shipped with the package, written there by a
  training run or by MONAI's ``download_large_files``) or in ``$VOLMAE_HOME/bundles/<name>/models/model.pt``
  (fetched or installed from a file by volmae), looked up in that order;
- **downloadable** when ``large_files.yml`` has an entry for ``models/model.pt`` with a URL and a sha256;
- **not released** otherwise: train the bundle, or install a weights file of your own.

``$VOLMAE_HOME`` defaults to ``~/.volmae`` (a folder in the system's temporary folder when the home folder is unusable,
e.g. ``/`` in a container). A download goes through urllib with the environment's proxy settings (``http_proxy``,
``https_proxy``, ``no_proxy``), streams into ``<file>.part``, resumes from the part's size with an HTTP Range request
(from the start when the server ignores it), and becomes the final file only once its sha256 matches (an atomic
rename): a failed download never leaves a final file. ``VOLMAE_OFFLINE=1`` turns off downloads on first use.

The functions take a bundle folder (:func:`volmae.artifact.bundles.find_bundle` turns a name into one); the weights
live under the folder's name.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from volmae.errors import ConfigError, DownloadError, VolmaeError
from volmae.utils.io import sha256_file

__all__ = [
    "WEIGHTS_FILE",
    "WeightsEntry",
    "ModelInfo",
    "volmae_home",
    "offline",
    "registry_entry",
    "home_weights",
    "installed_weights",
    "model_info",
    "opener",
    "download",
    "install_from_file",
    "ensure_weights",
    "training_command",
    "not_released_message",
    "offline_hint",
    "human_size",
]

WEIGHTS_FILE = "models/model.pt"  # the bundle's trained weights, relative to the bundle folder
CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds without a byte before a transfer counts as broken off (it resumes when run again)
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsEntry:
    """A registry entry: ``path`` in the bundle, ``url``, ``sha256`` (from ``large_files.yml``) and ``size`` in
    bytes (from the metadata's ``weights``; None when not given)."""

    path: str
    url: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class ModelInfo:
    """One bundle's weights as ``volmae-download --list`` shows them. ``status``: ``installed``, ``downloadable`` or
    ``not released``; ``size``: the installed file's, else the registry's (None: unknown); ``weights``: the
    installed file."""

    name: str
    task: str
    status: str
    license: str
    size: int | None
    weights: Path | None
    entry: WeightsEntry | None
    root: Path


def volmae_home() -> Path:
    """``$VOLMAE_HOME``, else ``~/.volmae``; when there is no usable home folder (unset, ``/``, not writable and no
    ``~/.volmae`` in it), ``<temp>/volmae-<uid>``."""
    env = os.environ.get("VOLMAE_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no password entry
        home = None
    if home is not None and home.is_absolute() and home != Path(home.anchor):
        if (home / ".volmae").is_dir() or (home.is_dir() and os.access(home, os.W_OK)):
            return home / ".volmae"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"volmae-{user}"


def offline() -> bool:
    """``VOLMAE_OFFLINE`` is set to 1 / true / yes / on: no download on first use."""
    return os.environ.get("VOLMAE_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _metadata(root: Path) -> dict:
    try:
        meta = json.loads((root / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _weights_meta(root: Path) -> dict:
    w = _metadata(root).get("weights")
    return w if isinstance(w, dict) else {}


def _large_files(root: Path) -> Path | None:
    """The bundle's ``large_files.{yml,yaml,json}`` (the files MONAI's ``download_large_files`` looks for)."""
    found = sorted(p for p in root.glob("large_files*") if p.suffix in (".yml", ".yaml", ".json") and p.is_file())
    return found[0] if found else None


def registry_entry(root: str | os.PathLike) -> WeightsEntry | None:
    """The registry's entry for the bundle's ``models/model.pt`` (None: no weights released); an entry without a URL
    or an sha256 is refused, naming the file (volmae installs only weights it can check)."""
    root = Path(root)
    f = _large_files(root)
    if f is None:
        return None
    try:
        data = yaml.safe_load(f.read_text())  # a JSON file is YAML too
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{f}: unreadable ({str(e).splitlines()[0]})") from None
    entries = data.get("large_files") if isinstance(data, dict) else None
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise ConfigError(f"{f}: 'large_files' is not a list")
    for e in entries:
        if not isinstance(e, dict) or str(e.get("path", "")).removeprefix("./") != WEIGHTS_FILE:
            continue
        url, sha = str(e.get("url") or ""), str(e.get("hash_val") or "").lower()
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https") or e.get("hash_type") != "sha256" or not _SHA256.fullmatch(sha):
            raise ConfigError(
                f"{f}: the entry of {WEIGHTS_FILE} needs an http(s) url, hash_type: sha256 and hash_val (64 hex "
                "digits); volmae installs only weights it can check"
            )
        size = _weights_meta(root).get("files", {}).get(WEIGHTS_FILE, {}).get("size")
        return WeightsEntry(WEIGHTS_FILE, url, sha, int(size) if isinstance(size, int) and size > 0 else None)
    return None


def home_weights(root: str | os.PathLike) -> Path:
    """Where volmae puts the bundle's fetched / installed weights: ``$VOLMAE_HOME/bundles/<name>/models/model.pt``."""
    return volmae_home() / "bundles" / Path(root).name / WEIGHTS_FILE


def installed_weights(root: str | os.PathLike) -> Path | None:
    """The bundle's weights file: in the bundle's folder, else under ``$VOLMAE_HOME``; None when neither has one."""
    for p in (Path(root) / WEIGHTS_FILE, home_weights(root)):
        if p.is_file():
            return p
    return None


def _short_task(task: str) -> str:
    """The metadata's task up to its first detail (`` (...)`` or ``: ...``)."""
    return re.split(r" \(|: ", task, maxsplit=1)[0]


def model_info(root: str | os.PathLike) -> ModelInfo:
    """The bundle's weights: status, licence, size, where they are."""
    root = Path(root)
    found = installed_weights(root)
    entry = registry_entry(root)
    status = "installed" if found else "downloadable" if entry else "not released"
    size = found.stat().st_size if found else entry.size if entry else None
    return ModelInfo(
        name=root.name,
        task=_short_task(str(_metadata(root).get("task", ""))),
        status=status,
        license=str(_weights_meta(root).get("license") or "see docs/data_license.txt"),
        size=size,
        weights=found,
        entry=entry,
        root=root,
    )


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"  # unreachable


def training_command(root: str | os.PathLike) -> str:
    config = Path(root) / "configs" / "train.json"
    return f"python -m monai.bundle run training --config_file {config} --dataset_dir ..."


def not_released_message(root: str | os.PathLike) -> str:
    name = Path(root).name
    return (
        f"no trained weights are released for bundle {name}; train it: {training_command(root)}; or install weights "
        f"of its network: volmae-download {name} --from-file FILE"
    )


def offline_hint(root: str | os.PathLike, entry: WeightsEntry) -> str:
    name = Path(root).name
    return (
        f"to install offline, fetch {entry.url} (sha256 {entry.sha256}) on a machine with network, copy it here and "
        f"run: volmae-download {name} --from-file model.pt"
    )


def opener() -> urllib.request.OpenerDirector:
    """urllib's opener with the environment's proxies (``http_proxy``, ``https_proxy``, ``no_proxy``:
    :func:`urllib.request.getproxies`), redirects followed."""
    return urllib.request.build_opener(urllib.request.ProxyHandler(urllib.request.getproxies()))


def _reason(e: BaseException) -> str:
    r = getattr(e, "reason", None)
    text = str(r if r is not None else e) or type(e).__name__
    return text.splitlines()[0] if text else type(e).__name__


def _unwritable(path: Path, e: OSError) -> str:
    return f"{path}: cannot write ({e.strerror or e}); free some space, or set VOLMAE_HOME to a writable folder"


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(_unwritable(folder, e)) from None


def _content_range_start(value: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", value or "")
    return int(m.group(1)) if m else None


def _fetch(root: Path, entry: WeightsEntry, part: Path, progress: bool) -> bool:
    """Stream ``entry.url`` into ``part``, appending from the part's size when the server takes a Range request;
    True when an earlier part was reused. Raises :class:`DownloadError` (the part kept for a resume) on a network
    failure or a transfer cut short."""
    from tqdm import tqdm

    from volmae import __version__

    offset = part.stat().st_size if part.is_file() else 0
    if entry.size is not None and offset > entry.size:
        part.unlink()
        offset = 0
    if offset and offset == entry.size:
        return True  # complete already: the checksum decides
    headers = {"User-Agent": f"volmae/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    host = urllib.parse.urlsplit(entry.url).netloc
    try:
        response = opener().open(urllib.request.Request(entry.url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # nothing after the part's end: the part is whole, or bad
            return True
        raise DownloadError(
            f"{entry.url}: HTTP {e.code} {e.reason}; try again later, or {offline_hint(root, entry)}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(
            f"cannot reach {host} ({_reason(e)}): no network, or a proxy to set (http_proxy / https_proxy)? "
            f"{offline_hint(root, entry)}"
        ) from None
    with response:
        resumed = (
            bool(offset)
            and response.status == 206
            and _content_range_start(response.headers.get("Content-Range")) == offset
        )
        if response.status == 206 and not resumed:  # a range we did not ask for: start afresh next time
            part.unlink(missing_ok=True)
            raise DownloadError(f"{entry.url}: the server sent a part of the file that was not asked for; run again")
        if not resumed:
            offset = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else entry.size
        done = offset
        try:
            f = open(part, "ab" if resumed else "wb")
        except OSError as e:
            raise DownloadError(_unwritable(part, e)) from None
        with (
            f,
            tqdm(
                total=expected, initial=offset, unit="B", unit_scale=True, desc=root.name, disable=not progress
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise DownloadError(
                        f"{entry.url}: the transfer broke off after {done} of {expected or '?'} bytes ({_reason(e)}); "
                        f"{part} is kept: run the same command again to resume"
                    ) from None
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DownloadError(_unwritable(part, e)) from None
                done += len(chunk)
                bar.update(len(chunk))
    if expected is not None and done < expected:
        raise DownloadError(
            f"{entry.url}: the transfer was cut short at {done} of {expected} bytes; {part} is kept: run the same "
            "command again to resume"
        )
    return resumed


def download(root: str | os.PathLike, progress: bool | None = None) -> Path:
    """Fetch the bundle's released weights into ``$VOLMAE_HOME/bundles/<name>/models/model.pt`` (nothing to do when
    they are installed); sha256-checked before the rename into place. ``progress``: a progress bar on stderr
    (default: when stderr is a terminal)."""
    root = Path(root)
    found = installed_weights(root)
    if found:
        return found
    entry = registry_entry(root)
    if entry is None:
        raise DownloadError(not_released_message(root))
    target = home_weights(root)
    _mkdir(target.parent)
    part = target.with_name(target.name + ".part")
    progress = sys.stderr.isatty() if progress is None else progress
    for attempt in range(2):
        resumed = _fetch(root, entry, part, progress)
        digest = sha256_file(part, CHUNK)
        if digest == entry.sha256:
            os.replace(part, target)
            return target
        part.unlink(missing_ok=True)
        if not (resumed and attempt == 0):  # a bad earlier part gets one fresh download
            raise DownloadError(
                f"{entry.url}: checksum mismatch (sha256 {digest}, the registry says {entry.sha256}); the download "
                f"was removed and nothing installed; try again, or {offline_hint(root, entry)}"
            )
    raise AssertionError("unreachable")


def install_from_file(
    root: str | os.PathLike, file: str | os.PathLike, check: Callable[[Path], object] | None = None
) -> Path:
    """Install weights from a local file (offline): a ``.pt``, or a ``.zip`` holding ``models/model.pt`` (e.g. a
    zipped bundle), into ``$VOLMAE_HOME/bundles/<name>/models/model.pt``. Checked against the registry's sha256 when
    the bundle has an entry, else with ``check(path)`` (e.g. that the weights fit the bundle's network); nothing is
    installed when a check fails."""
    root = Path(root)
    src = Path(file).expanduser()
    if not src.is_file():
        raise ConfigError(f"{src}: file not found")
    target = home_weights(root)
    _mkdir(target.parent)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    what = str(src)
    try:
        if src.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(src) as z:
                    members = [m for m in z.namelist() if m == WEIGHTS_FILE or m.endswith("/" + WEIGHTS_FILE)]
                    if len(members) != 1:
                        raise ConfigError(f"{src}: a zip must hold one {WEIGHTS_FILE} (found {len(members)})")
                    what = f"{src}:{members[0]}"
                    with z.open(members[0]) as r, open(tmp, "wb") as w:
                        shutil.copyfileobj(r, w, CHUNK)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
                raise ConfigError(f"{src}: not a readable zip ({e})") from None
        else:
            shutil.copyfile(src, tmp)
        entry = registry_entry(root)
        if entry is not None:
            digest = sha256_file(tmp, CHUNK)
            if digest != entry.sha256:
                raise DownloadError(
                    f"{what}: checksum mismatch (sha256 {digest}; the released weights of bundle {root.name} have "
                    f"{entry.sha256}): not installed"
                )
        elif check is not None:
            try:
                check(tmp)
            except VolmaeError as e:
                raise type(e)(str(e).replace(str(tmp), what)) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def ensure_weights(root: str | os.PathLike) -> Path | None:
    """The bundle's installed weights; released weights not installed yet are downloaded (one line on stderr says
    so) unless ``VOLMAE_OFFLINE`` is set; None when none are released."""
    root = Path(root)
    entry = None if installed_weights(root) else registry_entry(root)
    if entry is None:  # installed, or nothing released
        return installed_weights(root)
    if offline():
        raise DownloadError(
            f"the weights of bundle {root.name} are not installed and VOLMAE_OFFLINE is set; "
            + offline_hint(root, entry)
        )
    print(
        f"volmae: first use of bundle {root.name}: downloading its weights ({human_size(entry.size)}) from "
        f"{entry.url} into {home_weights(root)} (VOLMAE_OFFLINE=1 turns this off)",
        file=sys.stderr,
    )
    return download(root)
