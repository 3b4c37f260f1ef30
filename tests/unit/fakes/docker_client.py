"""A fake docker SDK client: just what harness.images calls (images.get, api.build, ping)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker.errors


@dataclass
class FakeImage:
    id: str
    tags: list[str]


@dataclass
class _Images:
    store: dict[str, FakeImage] = field(default_factory=dict)

    def get(self, name: str) -> FakeImage:
        if name not in self.store:
            raise docker.errors.ImageNotFound(f"No such image: {name}")
        return self.store[name]

    def list(self, name: str | None = None) -> list[FakeImage]:
        return [img for ref, img in self.store.items() if name is None or ref.startswith(name + ":")]


class _LowLevelAPI:
    def __init__(self, images: _Images, fail_with: str | None) -> None:
        self.images = images
        self.fail_with = fail_with
        self.builds: list[dict[str, Any]] = []

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.builds.append({k: v for k, v in kwargs.items() if k != "fileobj"})
        if self.fail_with:
            yield {"stream": "Step 1/6 : ARG BASE_IMAGE\n"}
            yield {"error": self.fail_with, "errorDetail": {"message": self.fail_with}}
            return
        tag = kwargs["tag"]
        digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
        self.images.store[tag] = FakeImage(digest, [tag])
        yield {"stream": "Step 1/6 : ARG BASE_IMAGE\n"}
        yield {"stream": f"Successfully tagged {tag}\n"}


class FakeDockerClient:
    """Holds `present` images; builds succeed (adding the tag) unless `fail_build` is set."""

    def __init__(self, present: list[str], *, fail_build: str | None = None) -> None:
        self.images = _Images(
            {ref: FakeImage("sha256:" + hashlib.sha256(ref.encode()).hexdigest(), [ref]) for ref in present}
        )
        self.api = _LowLevelAPI(self.images, fail_build)

    def ping(self) -> bool:
        return True
