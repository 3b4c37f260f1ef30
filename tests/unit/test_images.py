"""abtest_harness.images against a fake Docker client: tags, skipping, build arguments, error messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker.errors
import pytest

from abtest_harness import images
from abtest_harness.images import (
    BaseImageMissing,
    BuildContext,
    DockerUnavailable,
    ImageBuildError,
    build_scorer_images,
    content_digest,
    list_scorer_images,
    missing_images,
    remove_stale_scorer_images,
    resolve_base_image,
    scorer_image_refs,
)
from tests.unit.fakes.docker_client import FakeDockerClient

BASE = "abtest/base-python:bookworm"
BASE_ID = "sha256:" + "b" * 64
CONTEXT = BuildContext({"Dockerfile": b"ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n", "scorer.py": b"print('hi')\n"})


@dataclass(frozen=True)
class Spec:
    key: str
    repository: str
    answer: str


@dataclass(frozen=True)
class Plan:
    images: Mapping[str, Spec]


PLAN = Plan({
    "A": Spec("A", "abtest/scorer-a", "New Model A"),
    "B": Spec("B", "abtest/scorer-b", "New Model B"),
})


def _docker(**kwargs: Any) -> FakeDockerClient:
    """The shared fake client with the base image in its store."""
    return FakeDockerClient({BASE: BASE_ID}, **kwargs)


def build(fake: FakeDockerClient, **kwargs: Any) -> dict[str, str]:
    return build_scorer_images(PLAN, base_image=BASE, client=fake, context=CONTEXT, **kwargs)  # type: ignore[arg-type]


# --- tags ------------------------------------------------------------------------------------------


def test_tag_is_a_content_digest_that_changes_with_every_input() -> None:
    args = {"ANSWER": "New Model A", "BASE_IMAGE": BASE}
    tag = content_digest(CONTEXT, args, BASE_ID)
    assert re.fullmatch(r"[0-9a-f]{16}", tag), tag
    reordered = dict(reversed(list(args.items())))
    assert content_digest(CONTEXT, reordered, BASE_ID) == tag, "arg order must not matter"
    changed_app = BuildContext({**CONTEXT.files, "scorer.py": b"print('bye')\n"})
    variants = {
        "answer": content_digest(CONTEXT, {**args, "ANSWER": "New Model B"}, BASE_ID),
        "base image id": content_digest(CONTEXT, args, "sha256:" + "c" * 64),
        "base image name": content_digest(CONTEXT, {**args, "BASE_IMAGE": "python:3.12-slim"}, BASE_ID),
        "scorer.py": content_digest(changed_app, args, BASE_ID),
    }
    for what, other in variants.items():
        assert other != tag, f"changing the {what} must change the tag"
    # Moving bytes between fields must not collide (fields are length-prefixed).
    shifted = BuildContext(
        {"Dockerfile": b"ARG BASE_IMAGE\n", "scorer.py": b"FROM ${BASE_IMAGE}\nprint('hi')\n"}
    )
    assert content_digest(shifted, args, BASE_ID) != tag


def test_build_returns_content_refs_per_key_never_latest() -> None:
    fake = _docker()
    refs = build(fake)
    assert set(refs) == {"A", "B"}
    assert re.fullmatch(r"abtest/scorer-a:[0-9a-f]{16}", refs["A"]), refs
    assert re.fullmatch(r"abtest/scorer-b:[0-9a-f]{16}", refs["B"]), refs
    assert refs["A"].split(":")[1] != refs["B"].split(":")[1], "A and B answer differently: tags differ"
    assert not any(ref.endswith(":latest") for ref in refs.values())
    assert scorer_image_refs(PLAN, base_image=BASE, client=fake, context=CONTEXT) == refs  # type: ignore[arg-type]


def test_build_sends_the_two_file_context_and_the_build_arguments() -> None:
    fake = _docker()
    refs = build(fake)
    assert [b["tag"] for b in fake.builds] == [refs["A"], refs["B"]]
    first = fake.builds[0]
    assert first["buildargs"] == {"ANSWER": "New Model A", "BASE_IMAGE": BASE}
    assert fake.builds[1]["buildargs"]["ANSWER"] == "New Model B"
    assert first["context_files"] == dict(CONTEXT.files), "exactly the Dockerfile and scorer.py, nothing else"
    assert first["custom_context"] is True
    assert first["pull"] is False, "nothing may be pulled: no registry is assumed"
    assert first["labels"] == {images.DIGEST_LABEL: refs["A"].split(":")[1]}


def test_context_tar_is_byte_identical_for_identical_files() -> None:
    again = BuildContext(dict(reversed(list(CONTEXT.files.items()))))
    assert again.tar() == CONTEXT.tar()


def test_existing_tags_are_not_rebuilt() -> None:
    fake = _docker()
    first = build(fake)
    fake.calls.clear()
    second = build(fake)
    assert second == first
    assert not [c for c in fake.calls if c[0] == "api.build"], f"nothing may be built twice: {fake.calls}"


def test_only_the_missing_image_is_built_and_progress_says_which() -> None:
    fake = _docker()
    refs = scorer_image_refs(PLAN, base_image=BASE, client=fake, context=CONTEXT)  # type: ignore[arg-type]
    fake.store[refs["A"]] = "sha256:" + "a" * 64
    lines: list[str] = []
    build(fake, progress=lines.append)
    assert [b["tag"] for b in fake.builds] == [refs["B"]]
    assert lines == [f"image A: {refs['A']} exists, build skipped", f"image B: built {refs['B']} on {BASE}"]
    assert missing_images(refs.values(), client=fake) == []  # type: ignore[arg-type]


def test_no_cache_rebuilds_existing_tags() -> None:
    fake = _docker()
    build(fake)
    fake.builds.clear()
    build(fake, no_cache=True)
    assert len(fake.builds) == 2 and all(b["nocache"] is True for b in fake.builds)


# --- base image and errors -------------------------------------------------------------------------


def test_missing_base_image_says_how_to_get_one_and_builds_nothing() -> None:
    fake = FakeDockerClient()
    with pytest.raises(BaseImageMissing) as caught:
        build(fake)
    message = str(caught.value)
    assert BASE in message and "make base-image" in message and "--base-image" in message, message
    assert not fake.builds


def test_base_image_from_argument_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.BASE_IMAGE_ENV, raising=False)
    assert resolve_base_image() == images.DEFAULT_BASE_IMAGE
    monkeypatch.setenv(images.BASE_IMAGE_ENV, "mirror/python:3.11")
    assert resolve_base_image() == "mirror/python:3.11"
    assert resolve_base_image("python:3.12-slim") == "python:3.12-slim"


def test_unreachable_daemon_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> None:
        raise docker.errors.DockerException(
            "Error while fetching server API version: "
            "('Connection aborted.', FileNotFoundError(2, 'No such file'))"
        )

    monkeypatch.setattr(images.docker, "from_env", refuse)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/nowhere.sock")
    with pytest.raises(DockerUnavailable) as caught:
        build_scorer_images(PLAN)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "unix:///run/nowhere.sock" in message and "not reachable" in message, message
    assert "dockerd" in message and "--workloads=process" in message, message


def test_build_error_names_the_image_and_shows_the_log_tail() -> None:
    fake = _docker(build_output=[
        {"stream": "Step 4/15 : RUN useradd scorer\n"},
        {"error": "returned a non-zero code: 127", "errorDetail": {"message": "useradd: not found (127)"}},
    ])
    with pytest.raises(ImageBuildError) as caught:
        build(fake)
    message = str(caught.value)
    assert message.startswith("building abtest/scorer-a:"), message
    assert "useradd: not found (127)" in message and "Step 4/15 : RUN useradd scorer" in message, message


def test_a_build_that_leaves_no_tag_is_an_error() -> None:
    fake = _docker(tag_after_build=False)
    with pytest.raises(ImageBuildError, match="tag is missing"):
        build(fake)


def test_incomplete_context_names_the_missing_file(tmp_path: Any) -> None:
    with pytest.raises(images.HarnessError, match="missing .*nope.py"):
        BuildContext.scorer(app=tmp_path / "nope.py")


# --- listing for the kind backend ------------------------------------------------------------------


def test_list_and_remove_stale_tags_of_the_plan_only() -> None:
    fake = _docker()
    refs = build(fake)
    fake.store["abtest/scorer-a:0000000000000000"] = "sha256:old"
    fake.store["abtest/scorer-ab:1111111111111111"] = "sha256:other"  # another repository, same prefix
    fake.store["abtest/scorer-b:2222222222222222"] = "sha256:busy"
    fake.in_use.add("abtest/scorer-b:2222222222222222")
    listed = list_scorer_images(PLAN, client=fake)  # type: ignore[arg-type]
    assert listed == {
        "A": sorted([refs["A"], "abtest/scorer-a:0000000000000000"]),
        "B": sorted([refs["B"], "abtest/scorer-b:2222222222222222"]),
    }
    removed = remove_stale_scorer_images(PLAN, refs, client=fake)  # type: ignore[arg-type]
    assert removed == ["abtest/scorer-a:0000000000000000"], "the tag in use stays, current refs stay"
    assert refs["A"] in fake.store and "abtest/scorer-ab:1111111111111111" in fake.store


# --- the real Dockerfile ---------------------------------------------------------------------------


def test_real_context_holds_a_dockerfile_with_the_required_contract() -> None:
    context = BuildContext.scorer()
    assert set(context.files) == {"Dockerfile", "scorer.py"}
    dockerfile = context.files["Dockerfile"].decode()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", dockerfile, re.M), "public slim image by default"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert re.search(r'^ENV SCORER_ANSWER="\$\{ANSWER\}"', dockerfile, re.M), "the answer arg is baked in"
    user = re.search(r"^USER (\S+)$", dockerfile, re.M)
    assert user, "must run as a non-root user"
    uid = re.sub(r"\$\{SCORER_UID\}", re.search(r"^ARG SCORER_UID=(\d+)$", dockerfile, re.M).group(1),  # type: ignore[union-attr]
                 user.group(1))
    assert re.fullmatch(r"[1-9]\d*:\d+", uid), f"USER must be numeric and not 0 (runAsNonRoot): {uid}"
    assert re.search(r"^EXPOSE 5001$", dockerfile, re.M)
    assert re.search(r'^CMD \["python3", "scorer.py"\]$', dockerfile, re.M)
