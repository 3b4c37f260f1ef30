"""istioctl lookup and download: a loopback HTTP server stands in for the Istio release site."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from abtest_harness import istioctl
from abtest_harness.istioctl import IstioctlDownloadError, archive_name, ensure_istioctl
from tests.unit.fakes import install_fake_tools

VERSION = "1.30.4"
PLATFORM = ("linux", "amd64")
NAME = archive_name(VERSION, *PLATFORM)
BINARY = b"#!/bin/sh\necho istioctl from the loopback release site\n"


def make_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ReleaseSite:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and records the paths asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.asked: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                site.asked.append(self.path)
                data = site.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                body = data if data is not None else b"Not Found"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/releases/download"

    def publish(self, archive: bytes, digest: str | None = None, listed_name: str = NAME) -> None:
        digest = digest or hashlib.sha256(archive).hexdigest()
        self.files[f"/releases/download/{VERSION}/{NAME}"] = archive
        self.files[f"/releases/download/{VERSION}/{NAME}.sha256"] = f"{digest}  {listed_name}\n".encode()


@pytest.fixture
def site() -> Iterator[ReleaseSite]:
    release = ReleaseSite()
    release.thread.start()
    yield release
    release.server.shutdown()
    release.server.server_close()
    release.thread.join(timeout=5)


def no_istioctl(name: str) -> str | None:
    return None


def test_downloads_once_checks_the_published_digest_and_caches(site: ReleaseSite, tmp_path: Path) -> None:
    site.publish(make_archive({"istioctl": BINARY}))
    path = ensure_istioctl(
        VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM
    )
    assert path == str(tmp_path / f"istio-{VERSION}" / "istioctl")
    assert Path(path).read_bytes() == BINARY and os.access(path, os.X_OK)
    assert site.asked == [
        f"/releases/download/{VERSION}/{NAME}.sha256",
        f"/releases/download/{VERSION}/{NAME}",
    ]
    again = ensure_istioctl(
        VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM
    )
    assert again == path and len(site.asked) == 2, "a cached istioctl must not be downloaded again"


def test_a_digest_mismatch_installs_nothing_and_shows_both_digests(site: ReleaseSite, tmp_path: Path) -> None:
    archive = make_archive({"istioctl": BINARY})
    site.publish(archive, digest="0" * 64)
    with pytest.raises(IstioctlDownloadError) as caught:
        ensure_istioctl(VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM)
    message = str(caught.value)
    assert (
        "SHA-256 mismatch" in message
        and "0" * 64 in message
        and hashlib.sha256(archive).hexdigest() in message
    )
    target_dir = tmp_path / f"istio-{VERSION}"
    assert not target_dir.exists() or list(target_dir.iterdir()) == [], "nothing may be written on a mismatch"


def test_a_checksum_file_for_another_archive_is_refused(site: ReleaseSite, tmp_path: Path) -> None:
    site.publish(make_archive({"istioctl": BINARY}), listed_name="istioctl-1.30.4-osx-arm64.tar.gz")
    with pytest.raises(IstioctlDownloadError, match="not of 'istioctl-1.30.4-linux-amd64.tar.gz'"):
        ensure_istioctl(VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM)


def test_a_missing_release_names_the_url(site: ReleaseSite, tmp_path: Path) -> None:
    with pytest.raises(IstioctlDownloadError, match=rf"{VERSION}/{NAME}\.sha256: HTTP 404"):
        ensure_istioctl(VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM)


def test_an_archive_without_istioctl_is_refused(site: ReleaseSite, tmp_path: Path) -> None:
    site.publish(make_archive({"README.md": b"hello"}))
    with pytest.raises(IstioctlDownloadError, match="holds no istioctl"):
        ensure_istioctl(VERSION, cache_dir=tmp_path, base_url=site.url, which=no_istioctl, platform=PLATFORM)


def test_the_base_url_comes_from_the_environment(
    site: ReleaseSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.publish(make_archive({f"istio-{VERSION}/bin/istioctl": BINARY}))
    monkeypatch.setenv(istioctl.BASE_URL_ENV, site.url)
    path = ensure_istioctl(VERSION, cache_dir=tmp_path, which=no_istioctl, platform=PLATFORM)
    assert Path(path).read_bytes() == BINARY, "istioctl is found inside a versioned directory too"


@pytest.mark.parametrize(("reported", "used_from_path"), [(VERSION, True), ("1.29.2", False)])
def test_istioctl_on_path_is_used_only_at_the_pinned_version(
    site: ReleaseSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reported: str, used_from_path: bool
) -> None:
    fakes = install_fake_tools(tmp_path / "bin")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"istioctl_version": reported}))
    monkeypatch.setenv("FAKE_TOOLS_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    site.publish(make_archive({"istioctl": BINARY}))
    path = ensure_istioctl(VERSION, cache_dir=tmp_path / "cache", base_url=site.url, platform=PLATFORM)
    assert (path == str(fakes / "istioctl")) is used_from_path, path
    assert bool(site.asked) is not used_from_path


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [
        ("Linux", "x86_64", ("linux", "amd64")),
        ("Linux", "aarch64", ("linux", "arm64")),
        ("Darwin", "arm64", ("osx", "arm64")),
    ],
)
def test_host_platform_uses_istios_names(
    monkeypatch: pytest.MonkeyPatch, system: str, machine: str, expected: tuple[str, str]
) -> None:
    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert istioctl.host_platform() == expected


def test_an_unknown_platform_says_to_install_istioctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    with pytest.raises(IstioctlDownloadError, match="put it on PATH"):
        istioctl.host_platform()
