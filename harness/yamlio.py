"""Reading YAML input files with bounds: every bad input is one ConfigError naming the file.

The plan and every manifest file go through `load_documents`. It refuses, each with a
one-line :class:`~abtest_harness.errors.ConfigError` (exit 2 at the command line) instead of a
traceback or a hang:

* a missing path, a directory, a file that cannot be read;
* a file larger than `MAX_BYTES` (it is not read beyond that);
* bytes that are not UTF-8 (naming the line and byte offset);
* YAML syntax errors (naming the line);
* alias expansion beyond `MAX_ALIAS_NODES`: YAML anchors let a few hundred bytes stand for
  billions of nodes (``a: &a [x, x, ...]``, ``b: &b [*a, *a, ...]``, ...). The loader
  shares aliased nodes, so parsing is cheap, but anything that walks the data afterwards
  (schema validation, printing) pays the full expansion. The expanded size is counted on
  the composed node graph before any Python object is built, in time linear in the nodes
  actually written, and a cyclic alias counts as unbounded;
* nesting deeper than `MAX_DEPTH`.

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
...     _ = f.write("a: 1\\n---\\nb: [2, 3]\\n")
>>> load_documents(f.name)
[{'a': 1}, {'b': [2, 3]}]
>>> os.unlink(f.name)
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from abtest_harness.errors import ConfigError

__all__ = ["MAX_ALIAS_NODES", "MAX_BYTES", "MAX_DEPTH", "load_documents", "parse_documents"]

#: The largest input file read, in bytes. A Kubernetes object is at most about 1.5 MB once
#: stored; a manifest file of several such objects stays far below this.
MAX_BYTES = 8 * 1024 * 1024
#: The most nodes aliases may add to a file beyond the nodes written in it.
MAX_ALIAS_NODES = 100_000
#: The deepest nesting of mappings and sequences accepted.
MAX_DEPTH = 200

try:  # libyaml's parser when PyYAML was built with it (about 10x faster), else the pure one
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


def load_documents(path: str | Path, *, what: str = "") -> list[Any]:
    """The YAML documents of a file (empty documents kept as None), read within the bounds above.

    ``what`` prefixes the file in errors, e.g. ``"plan"`` gives ``plan manifests/x.yaml: ...``.
    """
    where = f"{what} {path}" if what else str(path)
    return parse_documents(_read_bounded(Path(path), where), where)


def parse_documents(data: bytes | str, where: str = "<input>") -> list[Any]:
    """The YAML documents of ``data`` (bytes must be UTF-8), within the bounds above."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise ConfigError(where, "", f"is larger than {MAX_BYTES} bytes; refused")
        text = _decode(data, where)
    else:
        text = data
    loader = _Loader(text)
    documents: list[Any] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            _check_expansion(node, where, len(documents))
            documents.append(loader.construct_document(node))
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, where) from None
    except RecursionError:
        raise ConfigError(where, "", f"nested more than {MAX_DEPTH} levels deep; refused") from None
    finally:
        loader.dispose()
    return documents


def _read_bounded(path: Path, where: str) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(where, "", "no such file") from None
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(where, "", "is a directory, not a YAML file")
    if stat.S_ISREG(info.st_mode) and info.st_size > MAX_BYTES:
        raise ConfigError(where, "", f"is {info.st_size} bytes, larger than {MAX_BYTES}; refused")
    try:
        with open(path, "rb") as handle:  # a FIFO or device has no size: read one byte past the cap
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(where, "", f"is larger than {MAX_BYTES} bytes; refused")
    return data


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(where, f"line {line}",
                          f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _syntax_error(exc: yaml.YAMLError, where: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    field = f"line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError(where, field, f"not valid YAML: {problem}")


def _check_expansion(root: yaml.Node, where: str, position: int) -> None:
    """Refuse a document whose aliases expand it by more than MAX_ALIAS_NODES, or nest too deeply.

    Iterative post-order walk over distinct nodes: each node's expanded size is computed once
    (aliases share node objects), so the walk costs the nodes written, not the expansion.
    """
    sizes: dict[int, int] = {}
    distinct = 0
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(where, f"document {position + 1}",
                              "an alias refers to a node that contains it, so it expands without end; refused")
        if depth > MAX_DEPTH:
            raise ConfigError(where, "", f"nested more than {MAX_DEPTH} levels deep; refused")
        distinct += 1
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node) if id(child) not in sizes)
        if distinct > MAX_BYTES:  # pragma: no cover - more nodes than bytes cannot be written
            break
    expanded = sizes.get(id(root), 0)
    if expanded - distinct > MAX_ALIAS_NODES:
        raise _alias_error(where, position,
                           f"aliases expand {distinct} written nodes to {_about(expanded)}")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _about(count: int) -> str:
    return f"{count} nodes" if count < 10**9 else f"about 10^{len(str(count)) - 1} nodes"


def _alias_error(where: str, position: int, detail: str) -> ConfigError:
    return ConfigError(where, f"document {position + 1}",
                       f"{detail}, more than the {MAX_ALIAS_NODES} extra nodes allowed "
                       "(a YAML alias bomb?); refused")

