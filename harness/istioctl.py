"""istioctl for the kind backend: the pinned version from PATH, or downloaded once and checked.

Istio publishes, for every release, an istioctl-only archive and its SHA-256 beside it:
``https://github.com/istio/istio/releases/download/<ver>/istioctl-<ver>-<os>-<arch>.tar.gz``
and ``...tar.gz.sha256`` (the file the ``downloadIstio`` script and most CI setups fetch).
The archive is downloaded into ``~/.cache/abtest-harness/istio-<ver>/`` only when no istioctl
of the pinned version is on PATH, its digest is compared with the published one before
anything is unpacked, and the binary is moved into place atomically so an interrupted
download never leaves a half-written istioctl behind.

>>> archive_name("1.30.4", "linux", "amd64")
'istioctl-1.30.4-linux-amd64.tar.gz'
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform as _platform
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from abtest_harness import proc
from abtest_harness.errors import CommandError, HarnessError

log = logging.getLogger(__name__)

#: The Istio release the kind backend installs. 1.30 supports Kubernetes 1.32-1.36
#: (istio.io supported-releases). 1.30.4 was announced 2026-08-27; 1.30.5 (2026-09-21) is
#: newer, but the SHA-256 of its istioctl archive could not be read from a primary source
#: when this was pinned (docs/kind.md, "Istio pin"). The download is checked against the
#: release's published .sha256 at run time either way.
ISTIO_VERSION = "1.30.4"
#: Where Istio publishes its release archives; override with ABTEST_ISTIO_BASE_URL (mirrors, tests).
DEFAULT_BASE_URL = "https://github.com/istio/istio/releases/download"
BASE_URL_ENV = "ABTEST_ISTIO_BASE_URL"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# A release archive is ~30 MB; anything far larger is not what we asked for.
_MAX_ARCHIVE_BYTES = 200 * 1024 * 1024


class IstioctlDownloadError(HarnessError):
    """istioctl could not be fetched or did not match its published SHA-256."""


def default_cache_dir() -> Path:
    """The harness's cache root: ``$XDG_CACHE_HOME/abtest-harness`` or ``~/.cache/abtest-harness``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "abtest-harness"


def host_platform() -> tuple[str, str]:
    """Istio's names for this machine's OS and CPU: (``linux``|``osx``, ``amd64``|``arm64``)."""
    system = _platform.system()
    machine = _platform.machine().lower()
    os_name = {"Linux": "linux", "Darwin": "osx"}.get(system)
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if os_name is None or arch is None:
        raise IstioctlDownloadError(
            f"no istioctl build for {system}/{machine}: install istioctl {ISTIO_VERSION} "
            "yourself and put it on PATH"
        )
    return os_name, arch


def archive_name(version: str, os_name: str, arch: str) -> str:
    """File name of the istioctl-only release archive."""
    return f"istioctl-{version}-{os_name}-{arch}.tar.gz"


def client_version(istioctl: str, *, timeout: float = 20.0) -> str | None:
    """The client version an istioctl binary reports, or None if it cannot say.

    ``--remote=false`` keeps it from contacting any cluster.
    """
    try:
        done = proc.run([istioctl, "version", "--remote=false", "-o", "json"], timeout=timeout)
    except (CommandError, OSError) as exc:
        log.info("cannot ask %s for its version: %s", istioctl, exc)
        return None
    try:
        data = json.loads(done.stdout)
        version = data["clientVersion"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(version) if version else None


def ensure_istioctl(
    version: str = ISTIO_VERSION,
    *,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    platform: tuple[str, str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Path of an istioctl of `version`: from PATH if it is that version, else the cached download.

    A different istioctl on PATH is not used: it would install a different Istio than the
    one this harness pins and documents.
    """
    on_path = which("istioctl")
    if on_path:
        found = client_version(on_path)
        if found == version:
            return on_path
        log.info(
            "istioctl on PATH (%s) is version %s, not %s: using the cached download", on_path, found, version
        )
    target = (cache_dir or default_cache_dir()) / f"istio-{version}" / "istioctl"
    if target.is_file() and os.access(target, os.X_OK):
        return str(target)
    download_istioctl(
        version,
        target,
        base_url=base_url,
        platform=platform,
        timeout=timeout,
        progress=progress,
    )
    return str(target)


def download_istioctl(
    version: str,
    target: Path,
    *,
    base_url: str | None = None,
    platform: tuple[str, str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Download the istioctl archive, check its published SHA-256, unpack istioctl to `target`.

    Raises IstioctlDownloadError naming the URL on any HTTP failure, a malformed checksum
    file, a digest mismatch (expected and actual digests both shown) or an archive without
    an ``istioctl`` file. Nothing is written to `target` unless every check passed.
    """
    os_name, arch = platform or host_platform()
    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    name = archive_name(version, os_name, arch)
    url = f"{base}/{version}/{name}"
    if progress:
        progress(f"downloading istioctl {version} from {url}")
    expected = _published_sha256(url + ".sha256", name, timeout)
    archive = _fetch(url, timeout)
    actual = hashlib.sha256(archive).hexdigest()
    if actual != expected:
        raise IstioctlDownloadError(
            f"SHA-256 mismatch for {url}: published {expected}, downloaded {actual}; "
            "nothing was installed (retry, or check the mirror in "
            f"{BASE_URL_ENV})"
        )
    binary = _extract_istioctl(archive, url)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a concurrent run or a Ctrl-C never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".istioctl-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(binary)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("istioctl %s installed at %s (sha256 %s)", version, target, actual)
    return target


def _fetch(url: str, timeout: float) -> bytes:
    # Imported here so that `python -m abtest_harness.prereqs` runs before the venv exists.
    import requests

    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise IstioctlDownloadError(f"cannot download {url}: {exc}") from exc
    if response.status_code != 200:
        raise IstioctlDownloadError(f"cannot download {url}: HTTP {response.status_code}")
    if len(response.content) > _MAX_ARCHIVE_BYTES:
        raise IstioctlDownloadError(
            f"{url} is {len(response.content)} bytes, larger than any istioctl archive"
        )
    return response.content


def _published_sha256(url: str, name: str, timeout: float) -> str:
    """The digest from a ``sha256sum``-style file: ``<hex>  <file name>`` (name optional)."""
    text = _fetch(url, timeout).decode("utf-8", errors="replace")
    fields = text.split()
    if not fields or not _HEX64.match(fields[0].lower()):
        raise IstioctlDownloadError(f"{url} holds no SHA-256 digest: {text[:80]!r}")
    if len(fields) > 1 and fields[1].lstrip("*") != name:
        raise IstioctlDownloadError(f"{url} is the checksum of {fields[1]!r}, not of {name!r}")
    return fields[0].lower()


def _extract_istioctl(archive: bytes, url: str) -> bytes:
    """The bytes of the ``istioctl`` regular file in the archive; nothing else is unpacked."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name == "istioctl":
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return extracted.read()
    except (tarfile.TarError, OSError) as exc:
        raise IstioctlDownloadError(f"{url} is not a readable .tar.gz: {exc}") from exc
    raise IstioctlDownloadError(f"{url} holds no istioctl file")
