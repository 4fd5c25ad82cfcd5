"""``volmae-download``: the bundles' trained weights: list them, fetch released ones ahead of use, install them from a
file on a machine without network.

Examples:
  volmae-download --list                           name, task, status (installed / downloadable / not released),
                                                   licence, size
  volmae-download hippocampus                      fetch the released weights (sha256-checked; run again to resume)
  volmae-download hippocampus --from-file model.pt install a copied file (.pt, or a .zip holding models/model.pt)

Weights go to $VOLMAE_HOME/bundles/<name>/models/model.pt ($VOLMAE_HOME: default ~/.volmae); a bundle whose own
folder has models/model.pt uses that. Downloads honour http_proxy / https_proxy / no_proxy. volmae-infer --bundle NAME
downloads released weights on first use unless VOLMAE_OFFLINE=1.
"""

from __future__ import annotations

import argparse
import sys

from volmae.artifact import hub
from volmae.artifact.bundles import download_weights, find_bundle, install_weights, list_models
from volmae.cli.common import run_main
from volmae.errors import DownloadError


def table(models: list[hub.ModelInfo]) -> str:
    """The ``--list`` table: name, task, status, licence, size (of the installed file, else of the download)."""
    rows = [("name", "task", "status", "licence", "size")]
    rows += [(m.name, m.task or "-", m.status, m.license or "-", hub.human_size(m.size)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    return "\n".join([*lines, f"weights folder: {hub.volmae_home() / 'bundles'} (VOLMAE_HOME)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        "volmae-download", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", help="bundle name (volmae-download --list) or a bundle folder")
    parser.add_argument("--list", action="store_true", help="list the bundles and their weights, download nothing")
    parser.add_argument(
        "--from-file", metavar="FILE", help="install this file, no download (.pt, or .zip with models/model.pt)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.list and not args.name:
        parser.error("name a bundle (volmae-download --list shows them)")

    def body() -> None:
        if args.list:
            print(table(list_models()))
            return
        root = find_bundle(args.name)
        if args.from_file:
            path = install_weights(root, args.from_file)
            print(f"{root.name}: installed {path}")
            return
        info = hub.model_info(root)
        if info.status == "installed":
            print(f"{root.name}: already installed ({info.weights}, {hub.human_size(info.size)})")
            return
        if info.status == "not released":
            raise DownloadError(hub.not_released_message(root))
        path = download_weights(root, progress=False if args.quiet else None)
        print(f"{root.name}: installed {path} ({hub.human_size(path.stat().st_size)}, sha256 checked)")

    return run_main("volmae-download", body)


if __name__ == "__main__":
    sys.exit(main())
