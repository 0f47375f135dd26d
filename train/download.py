"""Fetch public dataset files over HTTP(S) and verify their MD5 checksums.

A file is downloaded to a temporary name beside its destination and renamed only once
its checksum matches, so a failed or interrupted download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecnn.train.files import atomic_path
from edgecnn.train.imageset import DatasetError

TIMEOUT_S = 30
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str  # of the file as served (the .gz or .tar.gz itself)


class DownloadFailed(Exception):
    """The server could not be reached or did not serve the file (the caller says what to do instead)."""


def download(url: str, destination: Path, md5: str, log: Callable[[str], None] = lambda message: None) -> None:
    """Fetch ``url`` to ``destination``; DatasetError on a checksum mismatch, DownloadFailed when unreachable."""
    log(f"downloading {url}")
    with atomic_path(destination) as temp:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(temp, "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise DownloadFailed(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DownloadFailed(f"{url}: {getattr(exc, 'reason', None) or exc}") from None
        if digest.hexdigest() != md5:
            raise DatasetError(
                f"{url} did not match its checksum (md5 {digest.hexdigest()}, expected {md5}), "
                "so it was not saved: the download is corrupt or the mirror serves a different file"
            )


def fetch_missing(
    files: list[RemoteFile], base_url: str, directory: Path, log: Callable[[str], None] = lambda message: None
) -> None:
    """Download each of ``files`` not yet in ``directory`` from ``base_url``."""
    for remote in files:
        destination = directory / remote.name
        if not destination.exists():
            download(f"{base_url.rstrip('/')}/{remote.name}", destination, remote.md5, log)
