"""volmae's exceptions. Every problem a user can cause (bad file, bad argument, bad checkpoint) raises a subclass
of :class:`VolmaeError` whose message names the file or value and the problem; the console scripts print that
one line and exit with status 2 instead of a traceback."""

from __future__ import annotations

__all__ = ["VolmaeError", "DataError", "CheckpointError", "ConfigError", "DownloadError", "find_volmae_error"]


class VolmaeError(Exception):
    """Base class: a user-facing problem with a complete, one-line message."""


class DataError(VolmaeError, ValueError):
    """An input volume, label map or datalist is missing, unreadable or inconsistent."""


class CheckpointError(VolmaeError, ValueError):
    """A checkpoint is missing, unreadable, or belongs to another network."""


class ConfigError(VolmaeError, ValueError):
    """A configuration value is invalid or a required path / setting is missing."""


class DownloadError(VolmaeError):
    """Released weights could not be fetched or installed: no network, a transfer cut short, a checksum mismatch."""


def find_volmae_error(exc: BaseException | None) -> VolmaeError | None:
    """The first :class:`VolmaeError` in ``exc``'s cause/context chain (MONAI wraps transform errors in
    "applying transform ..." ``RuntimeError`` s)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VolmaeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
