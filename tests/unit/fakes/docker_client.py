"""The one fake docker SDK client of the unit tests: what abtest_harness.images, prereqs and kind call.

`FakeDockerClient` holds a local image store (ref -> id) and records every call:

- ``images.get`` / ``images.list`` / ``images.remove`` (a ref in `in_use` refuses removal, as
  the engine does for an image a container uses);
- ``api.build`` records its keyword arguments in `builds`, with the build context untarred
  into ``context_files``, streams `build_output`, and tags the image unless the output has an
  error, `fail_build` is set or `tag_after_build` is False;
- ``ping`` and ``version`` (``{"Version": server_version}``).

`store` is also reachable as ``images.store`` and `builds` as ``api.builds``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors


@dataclass
class FakeImage:
    id: str
    tags: list[str]


def image_id(ref: str) -> str:
    """The id the fake gives an image it builds or is handed by ref alone."""
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


class _Images:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client

    @property
    def store(self) -> dict[str, str]:
        return self._client.store

    def get(self, ref: str) -> FakeImage:
        self._client.calls.append(("images.get", ref))
        if ref not in self._client.store:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return FakeImage(self._client.store[ref], [ref])

    def list(self, name: str | None = None) -> list[FakeImage]:
        self._client.calls.append(("images.list", name))
        return [FakeImage(i, [ref]) for ref, i in self._client.store.items()
                if name is None or ref.startswith(name)]

    def remove(self, image: str, noprune: bool = False, force: bool = False) -> None:
        self._client.calls.append(("images.remove", image))
        if image in self._client.in_use and not force:
            raise docker.errors.APIError("conflict: image is being used by a container")
        if image not in self._client.store:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        del self._client.store[image]


class _LowLevelAPI:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client

    @property
    def builds(self) -> list[dict[str, Any]]:
        return self._client.builds

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        client = self._client
        client.calls.append(("api.build", kwargs.get("tag")))
        fileobj = kwargs.pop("fileobj", None)
        if fileobj is not None:
            kwargs["context_files"] = _untar(fileobj.getvalue())
        client.builds.append(kwargs)
        if client.fail_build:
            output = [{"stream": "Step 1/6 : ARG BASE_IMAGE\n"},
                      {"error": client.fail_build, "errorDetail": {"message": client.fail_build}}]
        else:
            output = list(client.build_output)
        failed = any("error" in chunk for chunk in output)
        tag = kwargs.get("tag")
        if tag and client.tag_after_build and not failed:
            client.store[tag] = image_id(tag)
            if client.build_output is _DEFAULT_OUTPUT:
                output.append({"stream": f"Successfully tagged {tag}\n"})
        return iter(output)


_DEFAULT_OUTPUT: list[dict[str, Any]] = [{"stream": "Step 1/6 : ARG BASE_IMAGE\n"}]


def _untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        files = {}
        for member in archive.getmembers():
            extracted = archive.extractfile(member)
            if extracted is not None:
                files[member.name] = extracted.read()
        return files


class FakeDockerClient:
    """Holds `present` images (refs, or ref -> id); builds succeed (adding the tag) unless told otherwise."""

    def __init__(
        self,
        present: Iterable[str] | Mapping[str, str] = (),
        *,
        fail_build: str | None = None,
        build_output: list[dict[str, Any]] | None = None,
        tag_after_build: bool = True,
        server_version: str = "29.0.1",
    ) -> None:
        if isinstance(present, Mapping):
            self.store: dict[str, str] = dict(present)
        else:
            self.store = {ref: image_id(ref) for ref in present}
        self.fail_build = fail_build
        self.build_output = _DEFAULT_OUTPUT if build_output is None else build_output
        self.tag_after_build = tag_after_build
        self.server_version = server_version
        self.calls: list[tuple[str, Any]] = []
        self.builds: list[dict[str, Any]] = []
        self.in_use: set[str] = set()
        self.images = _Images(self)
        self.api = _LowLevelAPI(self)

    def ping(self) -> bool:
        self.calls.append(("ping", None))
        return True

    def version(self) -> dict[str, str]:
        self.calls.append(("version", None))
        return {"Version": self.server_version}
