"""Build the scoring images (A and B) with the Docker SDK, tagged by what they are made of.

Both images come from one Dockerfile (``images/scorer/Dockerfile``) and one app
(``harness/scorer.py``); they differ only in the ``ANSWER`` build argument. The tag is a digest
of everything that goes into the image: the build-context files, the build arguments and the id
of the base image. The same inputs give the same tag, so a build is skipped when that tag
already exists, and a changed scorer or base image can never hide behind an old tag (nor behind
``:latest``, which is never used).

No registry is assumed: the base image must exist locally. On machines without registry access
``make base-image`` builds one from Debian packages (``images/base/build-base-image``).

Used by the local mesh's docker workloads and by the kind backend, which side-loads the refs::

    refs = build_scorer_images(load_plan())        # {"A": "abtest/scorer-a:3f0c...", "B": ...}
    objects = render_stage(plan, "Blue_50", image_refs=refs)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors

from abtest_harness.errors import HarnessError

_log = logging.getLogger(__name__)

#: The base image `make base-image` builds; ``ABTEST_BASE_IMAGE`` or ``--base-image`` override it.
DEFAULT_BASE_IMAGE = "abtest/base-python:bookworm"
BASE_IMAGE_ENV = "ABTEST_BASE_IMAGE"
REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "images" / "scorer" / "Dockerfile"
SCORER_APP = Path(__file__).resolve().parent / "scorer.py"
#: Label on every image built here; its value is the content digest that the tag carries.
DIGEST_LABEL = "abtest-harness/content-digest"
# Bumped when the way a tag is derived changes, so old tags are not reused by mistake.
_TAG_SCHEME = b"abtest-scorer-image/1"
_TAG_LENGTH = 16
# Seconds the Docker client waits on one API call; a build streams, so this bounds a stall.
_API_TIMEOUT = 300


class DockerUnavailable(HarnessError):
    """The Docker daemon cannot be reached."""


class BaseImageMissing(HarnessError):
    """The base image for the scorer images is not present locally."""


class ImageBuildError(HarnessError):
    """``docker build`` failed; the message ends with the last lines of the build log."""

    def __init__(self, ref: str, reason: str, log_tail: list[str]) -> None:
        self.ref = ref
        self.reason = reason
        self.log_tail = log_tail
        tail = ("\n  " + "\n  ".join(log_tail)) if log_tail else ""
        super().__init__(f"building {ref} failed: {reason}{tail}")


class ImageSpecLike(Protocol):
    """What a build needs of a plan's image (``abtest_harness.plan.ImageSpec``)."""

    @property
    def key(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def answer(self) -> str: ...


class PlanLike(Protocol):
    """What a build needs of a plan (``abtest_harness.plan.RolloutPlan``): its images by key."""

    @property
    def images(self) -> Mapping[str, ImageSpecLike]: ...


Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildContext:
    """The files sent to the Docker daemon, by name in the context, and their digest."""

    files: Mapping[str, bytes]

    @classmethod
    def scorer(cls, dockerfile: Path = DOCKERFILE, app: Path = SCORER_APP) -> BuildContext:
        """The two-file context of the scorer image: the Dockerfile and scorer.py."""
        missing = [str(p) for p in (dockerfile, app) if not p.is_file()]
        if missing:
            raise HarnessError(f"scorer build context incomplete: missing {', '.join(missing)}")
        return cls({"Dockerfile": dockerfile.read_bytes(), "scorer.py": app.read_bytes()})

    def tar(self) -> bytes:
        """The context as an uncompressed tar with fixed metadata (same files, same bytes)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(self.files):
                data = self.files[name]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def content_digest(context: BuildContext, buildargs: Mapping[str, str], base_image_id: str) -> str:
    """The tag of an image: a digest of its context files, build arguments and base image id.

    >>> ctx = BuildContext({"Dockerfile": b"FROM x", "scorer.py": b"print(1)"})
    >>> a = content_digest(ctx, {"ANSWER": "A"}, "sha256:00")
    >>> a == content_digest(ctx, {"ANSWER": "A"}, "sha256:00")
    True
    >>> a == content_digest(ctx, {"ANSWER": "B"}, "sha256:00")
    False
    >>> len(a)
    16
    """
    digest = hashlib.sha256(_TAG_SCHEME)
    # Length-prefixed fields, so no two different inputs can concatenate to the same bytes.
    for name in sorted(context.files):
        _feed(digest, b"file", name.encode(), context.files[name])
    _feed(digest, b"args", json.dumps(dict(sorted(buildargs.items()))).encode())
    _feed(digest, b"base", base_image_id.encode())
    return digest.hexdigest()[:_TAG_LENGTH]


def _feed(digest: Any, *parts: bytes) -> None:
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)


def buildargs_for(spec: ImageSpecLike, base_image: str) -> dict[str, str]:
    """The build arguments of one scorer image."""
    return {"ANSWER": spec.answer, "BASE_IMAGE": base_image}


def resolve_base_image(base_image: str | None = None) -> str:
    """The base image to use: the argument, else ``$ABTEST_BASE_IMAGE``, else the local default."""
    return base_image or os.environ.get(BASE_IMAGE_ENV) or DEFAULT_BASE_IMAGE


def docker_client() -> docker.DockerClient:
    """A client for the daemon of ``docker.from_env()``; DockerUnavailable when it does not answer."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=_API_TIMEOUT)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            f"the Docker daemon at {where} is not reachable ({_first_line(exc)}): start it "
            "(`dockerd` as root, or `sudo systemctl start docker`) or set DOCKER_HOST; "
            "without Docker use --workloads=process"
        ) from exc
    return client


def base_image_id(client: docker.DockerClient, base_image: str) -> str:
    """The local id of `base_image`; BaseImageMissing (with what to do) when it is not there.

    Never pulls: the machines this runs on may have no registry, and a pull that hangs on a
    network timeout explains less than this error.
    """
    try:
        image = client.images.get(base_image)
    except docker.errors.ImageNotFound:
        raise BaseImageMissing(
            f"base image {base_image!r} is not present locally (nothing is pulled): "
            "build it with `make base-image` or pass --base-image with an image you have "
            "(for example after `docker pull python:3.12-slim`)"
        ) from None
    except docker.errors.APIError as exc:
        raise DockerUnavailable(f"cannot inspect base image {base_image!r}: {_first_line(exc)}") from exc
    return str(image.id)


def scorer_image_refs(
    plan: PlanLike,
    *,
    base_image: str | None = None,
    client: docker.DockerClient | None = None,
    context: BuildContext | None = None,
) -> dict[str, str]:
    """The refs (image key -> ``repository:digest``) a build would produce, without building.

    Needs the daemon only to read the base image's id.
    """
    client = client if client is not None else docker_client()
    base = resolve_base_image(base_image)
    base_id = base_image_id(client, base)
    context = context if context is not None else BuildContext.scorer()
    return {
        key: f"{spec.repository}:{content_digest(context, buildargs_for(spec, base), base_id)}"
        for key, spec in plan.images.items()
    }


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    """Whether `ref` is present in the local image store."""
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def missing_images(refs: Iterable[str], *, client: docker.DockerClient | None = None) -> list[str]:
    """The refs not present locally, in the given order (for a check before side-loading)."""
    client = client if client is not None else docker_client()
    return [ref for ref in refs if not image_exists(client, ref)]


def build_scorer_images(
    plan: PlanLike,
    *,
    base_image: str | None = None,
    client: docker.DockerClient | None = None,
    progress: Progress | None = None,
    context: BuildContext | None = None,
    no_cache: bool = False,
) -> dict[str, str]:
    """Build every image of the plan (skipping those already present) and return key -> ref.

    `base_image` defaults to ``$ABTEST_BASE_IMAGE`` or ``abtest/base-python:bookworm``; it must
    exist locally. `progress` receives one line per image ("built ..." or "exists ..."); the
    build output goes to the ``abtest_harness.images`` logger at DEBUG level. `no_cache` rebuilds
    every layer even when the tag exists (benchmarks).
    """
    client = client if client is not None else docker_client()
    base = resolve_base_image(base_image)
    base_id = base_image_id(client, base)
    context = context if context is not None else BuildContext.scorer()
    say = progress if progress is not None else (lambda line: None)
    refs: dict[str, str] = {}
    for key, spec in plan.images.items():
        buildargs = buildargs_for(spec, base)
        digest = content_digest(context, buildargs, base_id)
        ref = f"{spec.repository}:{digest}"
        if not no_cache and image_exists(client, ref):
            say(f"image {key}: {ref} exists, build skipped")
        else:
            _build(client, context, ref, buildargs, digest, no_cache=no_cache, say=say)
            say(f"image {key}: built {ref} on {base}")
        refs[key] = ref
    return refs


def _build(
    client: docker.DockerClient,
    context: BuildContext,
    ref: str,
    buildargs: Mapping[str, str],
    digest: str,
    *,
    no_cache: bool,
    say: Progress,
) -> None:
    """Run one build through the low-level API, so its output can be streamed to `say`."""
    log: list[str] = []
    try:
        stream = client.api.build(
            fileobj=io.BytesIO(context.tar()),
            custom_context=True,
            tag=ref,
            buildargs=dict(buildargs),
            # Not the managed-by label: containers inherit image labels, and that one marks
            # what a run created (and may reap), not every container of this image.
            labels={DIGEST_LABEL: digest},
            pull=False,  # nothing is pulled: the base image was checked to be local
            nocache=no_cache,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in _chunks(stream):
            if "error" in chunk:
                reason = str(chunk.get("errorDetail", {}).get("message") or chunk["error"]).strip()
                raise ImageBuildError(ref, reason, log[-15:])
            text = str(chunk.get("stream", "")).rstrip()
            if text:
                log.append(text)
                _log.debug("build %s: %s", ref, text)
    except docker.errors.APIError as exc:
        raise ImageBuildError(ref, _first_line(exc), log[-15:]) from exc
    if not image_exists(client, ref):
        raise ImageBuildError(ref, "the build finished but the tag is missing", log[-15:])


def _chunks(stream: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for chunk in stream:
        if isinstance(chunk, dict):
            yield chunk


def list_scorer_images(plan: PlanLike, *, client: docker.DockerClient | None = None) -> dict[str, list[str]]:
    """The local tags of each of the plan's repositories, by image key (sorted).

    Every content tag ever built stays until removed; this shows what is there.
    """
    client = client if client is not None else docker_client()
    found: dict[str, list[str]] = {}
    for key, spec in plan.images.items():
        tags = {
            tag
            for image in client.images.list(name=spec.repository)
            for tag in image.tags
            if tag.rsplit(":", 1)[0] == spec.repository
        }
        found[key] = sorted(tags)
    return found


def remove_stale_scorer_images(
    plan: PlanLike, keep: Mapping[str, str], *, client: docker.DockerClient | None = None
) -> list[str]:
    """Untag the plan's image tags other than the refs in `keep`; returns what was removed."""
    client = client if client is not None else docker_client()
    wanted = set(keep.values())
    removed: list[str] = []
    for tags in list_scorer_images(plan, client=client).values():
        for tag in tags:
            if tag not in wanted:
                try:
                    client.images.remove(tag, noprune=False)
                except docker.errors.APIError:
                    continue  # in use by a container: leave it
                removed.append(tag)
    return removed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
