"""A content-addressed cache of what ``kubectl kustomize`` and ``helm template`` print.

Rendering a stage runs a tool that takes about a tenth of a second of CPU, most of the
offline gate's cost. The tools are deterministic in their inputs, so their output is
stored under a key that covers every input, and a gate on an unchanged tree reads it back
instead of running the tool:

* the sha256 of the bytes of every file the tool may read, with its absolute path: for
  kustomize, every file under the kustomization's directory and under each directory its
  ``resources``, ``bases``, ``components``, ``generators``, ``transformers`` and
  ``validators`` name (recursively; kustomize's default load restrictor confines every
  other file it reads to those directories); for Helm, every file under the chart's
  directory (its ``charts/`` dependencies included) and every values file;
* the rest of the command line (release, namespace, ``--set`` values, the generated
  kustomization of a ``stages.yaml`` plan);
* the tool binary's resolved path, size and modification time (a new kubectl or Helm is a
  new key), and every ``HELM_*``, ``KUSTOMIZE_*`` and ``KUBECTL_*`` environment variable.

Any changed byte is a different key, so a stale entry is never read; only successful runs
are stored. An input that cannot be enumerated (a remote resource such as a git URL, a
kustomization that is not a YAML mapping, a tree over `MAX_TREE_FILES` files or
`MAX_TREE_BYTES` bytes) is rendered by the tool every time.

Where: ``$ABTEST_RENDER_CACHE`` if set (``off`` disables the cache), else
``$XDG_CACHE_HOME/abtest-harness/render``, else ``~/.cache/abtest-harness/render``. Entries
are written atomically; at most `MAX_ENTRIES` are kept (the least recently used go first).
Deleting the directory is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

CACHE_ENV = "ABTEST_RENDER_CACHE"
#: Bumped when the key or the entry format changes.
FORMAT = 1
MAX_ENTRIES = 512
MAX_TREE_FILES = 2_000
MAX_TREE_BYTES = 32 * 1024 * 1024
_OFF = frozenset({"", "0", "off", "no", "false", "none"})
_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_REFERENCES = ("resources", "bases", "components", "generators", "transformers", "validators")
_ENV_PREFIXES = ("HELM_", "KUSTOMIZE_", "KUBECTL_")

try:
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


class _Uncacheable(Exception):
    """The inputs cannot be enumerated: run the tool."""


def cache_dir() -> Path | None:
    """The cache directory, or None when ``$ABTEST_RENDER_CACHE`` turns the cache off."""
    given = os.environ.get(CACHE_ENV)
    if given is not None:
        return None if given.strip().lower() in _OFF else Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "abtest-harness" / "render"


def kustomize_inputs(root: Path) -> list[Path]:
    """Every file ``kubectl kustomize root`` may read; _Uncacheable when that cannot be known."""
    files: set[Path] = set()
    seen: set[Path] = set()
    stack = [root.resolve()]
    while stack:
        directory = stack.pop()
        if directory in seen:
            continue
        seen.add(directory)
        files.update(_tree(directory))
        kustomization = next((directory / n for n in _KUSTOMIZATION_FILES if (directory / n).is_file()), None)
        if kustomization is None:
            continue  # kustomize refuses it; a failed run is never stored
        try:
            data = yaml.load(kustomization.read_bytes(), Loader=_Loader)  # noqa: S506 - a safe loader
        except (OSError, yaml.YAMLError) as exc:
            raise _Uncacheable(f"{kustomization}: {exc}") from None
        if not isinstance(data, dict):
            raise _Uncacheable(f"{kustomization} is not a mapping")
        for field in _REFERENCES:
            entries = data.get(field) or []
            if not isinstance(entries, list):
                raise _Uncacheable(f"{kustomization}: {field} is not a list")
            for entry in entries:
                if not isinstance(entry, str):
                    raise _Uncacheable(f"{kustomization}: {field} holds a non-string")
                if "\n" in entry:
                    continue  # an inline generator/transformer configuration: part of this file
                target = directory / entry
                if target.is_dir():
                    stack.append(target.resolve())
                elif target.is_file():
                    files.add(target.resolve())
                else:
                    raise _Uncacheable(f"{kustomization}: {field} entry {entry!r} is not a local path")
    return sorted(files)


def helm_inputs(chart: Path, values: Iterable[Path]) -> list[Path]:
    """Every file ``helm template`` reads for a local chart directory and values files."""
    return sorted({*_tree(chart.resolve()), *(Path(v).resolve() for v in values)})


def _tree(directory: Path) -> list[Path]:
    out: list[Path] = []
    total = 0
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        if len(out) > MAX_TREE_FILES:
            raise _Uncacheable(f"{directory}: more than {MAX_TREE_FILES} files")
        real = os.path.realpath(dirpath)
        if real in walked:  # a link back into the tree: its files are counted once
            dirnames.clear()
            continue
        walked.add(real)
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath, name)
            try:
                total += path.stat().st_size
            except OSError:
                continue  # a dangling link: the tool cannot read it either
            out.append(path.resolve())
        if total > MAX_TREE_BYTES:
            raise _Uncacheable(f"{directory}: more than {MAX_TREE_BYTES} bytes")
    return out


def _tool_identity(tool: str) -> list[object]:
    path = Path(tool).resolve()
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns]


def key(tool: str, command: Sequence[str], files: Iterable[Path], extra: Mapping[str, object] | None = None) -> str:
    """The cache key: tool identity, command, tool environment, and every file's path and bytes."""
    digest = hashlib.sha256()
    header = {
        "format": FORMAT,
        "tool": _tool_identity(tool),
        "command": list(command),
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)),
        "extra": extra or {},
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for file in files:
        name = str(file).encode()
        data = file.read_bytes()
        digest.update(b"\0file\0%d\0%s\0%d\0" % (len(name), name, len(data)))
        digest.update(data)
    return digest.hexdigest()


def try_key(tool: str, command: Sequence[str], inputs: Callable[[], list[Path]],
            extra: Mapping[str, object] | None = None) -> str | None:
    """`key` of a run whose inputs can be listed and read; None otherwise (it is never cached)."""
    try:
        return key(tool, command, inputs(), extra)
    except (_Uncacheable, OSError):
        return None


def has(entry_key: str) -> bool:
    """Whether an output is stored under this key (False with the cache turned off)."""
    directory = cache_dir()
    return directory is not None and (directory / f"{entry_key}.out").is_file()


def cached_output(
    tool: str,
    command: Sequence[str],
    inputs: Callable[[], list[Path]],
    run: Callable[[], str],
    *,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The tool's output for these inputs: from the cache when stored, else `run()` (then stored).

    `inputs` lists the files the run reads (raising _Uncacheable when it cannot); `command`
    and `extra` are whatever else determines the output.
    """
    directory = cache_dir()
    if directory is None:
        return run()
    try:
        entry = directory / f"{key(tool, command, inputs(), extra)}.out"
    except (_Uncacheable, OSError) as exc:
        log.info("render cache: not cacheable (%s)", exc)
        return run()
    try:
        text = entry.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    else:
        log.info("render cache: hit %s", entry.name)
        try:
            os.utime(entry)  # most recently used
        except OSError:
            pass
        return text
    text = run()
    try:
        # A file changed while the tool ran: its output may mix both versions; do not store it.
        unchanged = entry.name == f"{key(tool, command, inputs(), extra)}.out"
    except (_Uncacheable, OSError):
        unchanged = False
    if unchanged:
        _store(directory, entry, text)
    return text


def _store(directory: Path, entry: Path, text: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".out")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _prune(directory)
    except OSError as exc:
        log.info("render cache: not stored (%s)", exc)


def _prune(directory: Path) -> None:
    entries = list(directory.glob("*.out"))
    if len(entries) <= MAX_ENTRIES:
        return
    def used(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return 0

    entries.sort(key=used)
    for old in entries[: len(entries) - MAX_ENTRIES]:
        old.unlink(missing_ok=True)
