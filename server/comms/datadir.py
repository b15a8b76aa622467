"""The data directory and the database files: readable by the service's user alone.

They hold the page-token HMAC key, the development signing key and every brand's data."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from comms import devkeys
from comms.config import ConfigError, Settings

log = logging.getLogger(__name__)

DIR_MODE, FILE_MODE = 0o700, 0o600


def make_private(settings: Settings) -> None:
    """Create the data directory (0700) and tighten what an earlier, looser run left there.
    From here on this process creates files for its user alone: SQLite gives -wal and -shm
    the database file's mode, and Envoy's config, the keys and a new database get 0600."""
    directory = settings.data_dir
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"cannot create the data directory {directory}: {error.strerror}"
        ) from None
    os.umask(0o077)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & stat.S_ISVTX:  # a shared directory such as /tmp: never ours to close
        log.warning("data directory %s is shared (mode %o): use one of its own", directory, mode)
    else:
        _tighten(directory, mode, DIR_MODE)
    private = [
        *directory.glob("envoy-*.yaml"),
        directory / devkeys.PRIVATE_KEY_FILE,
        directory / devkeys.JWKS_FILE,
    ]
    database = settings.sqlite_path
    if database is not None:
        private += [database, *database.parent.glob(f"{database.name}-*")]  # -wal, -shm, ...
    for path in private:
        if path.is_file():
            _tighten(path, stat.S_IMODE(path.stat().st_mode), FILE_MODE)


def _tighten(path: Path, mode: int, allowed: int) -> None:
    if mode & ~allowed:
        path.chmod(mode & allowed)
        log.warning("%s was mode %o, readable by others: now %o", path, mode, mode & allowed)
