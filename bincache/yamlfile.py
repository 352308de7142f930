"""YAML files that people edit by hand: read with the line of every key, changed in place.

One parser, ruamel.yaml in round-trip mode, for both: reading gives plain data (dicts, lists,
scalars) plus ``{key path: line}`` for error messages and ``config blame``; editing applies a
new plain value onto the parsed document, so comments, quoting and every entry that did not
change are written back as they were.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.tokens import CommentToken

from . import atomic as _atomic
from .errors import ConfigError

Path = tuple  # a key path, e.g. ("mirrors", "local", "url")


def _yaml(allow_duplicates: bool = False) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 1 << 30
    y.indent(mapping=2, sequence=4, offset=2)
    # ruamel writes [a, {k: v}] back as [a, k: v] unless told: keep what the user wrote.
    y.brace_single_entry_mapping_in_flow_sequence = True
    y.allow_duplicate_keys = allow_duplicates
    return y


def _key(path: Path) -> str:
    return ":".join(str(p) for p in path)


def load(text: str, file: str) -> Any:
    """The round-trip document of YAML text (None when empty). ConfigError names the file and
    line of a syntax error or a duplicate key."""
    try:
        return _yaml().load(text)
    except MarkedYAMLError as e:
        if "duplicate key" in (e.problem or ""):
            raise _duplicate(text, file, e) from None
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except YAMLError as e:
        raise ConfigError(f"{file}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None


def _duplicate(text: str, file: str, e: MarkedYAMLError) -> ConfigError:
    """``file:line: key:path: duplicate key (the first one is on line N)``."""
    line = e.problem_mark.line + 1 if e.problem_mark else 0
    m = re.search(r'duplicate key "(.*?)" with', e.problem or "")
    ctx = e.context_mark
    if m is None or ctx is None:
        return ConfigError(f"{file}:{line}: duplicate key")
    key = m.group(1)
    doc = _yaml(allow_duplicates=True).load(text)  # the first value wins: its line is kept
    stack: list[tuple[Path, Any]] = [((), doc)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, CommentedMap):
            if (node.lc.line, node.lc.col) == (ctx.line, ctx.column) and key in node:
                first = node.lc.key(key)[0] + 1
                return ConfigError(
                    f"{file}:{line}: {_key((*path, key))}: duplicate key "
                    f"(the first one is on line {first})"
                )
            stack.extend(((*path, k), v) for k, v in node.items())
        elif isinstance(node, CommentedSeq):
            stack.extend(((*path, i), v) for i, v in enumerate(node))
    return ConfigError(f"{file}:{line}: {key}: duplicate key")


def plain(node: Any, file: str, path: Path = (), lines: dict[Path, int] | None = None) -> Any:
    """Plain data of a round-trip node; fills ``lines`` with the 1-based line of each key path."""
    if lines is None:
        lines = {}
    if isinstance(node, CommentedMap):
        lines.setdefault(path, node.lc.line + 1)
        result: dict[Any, Any] = {}
        for key, value in node.items():  # merge keys ("<<") are already resolved here
            line = node.lc.key(key)[0] + 1 if key in node._ok else lines[path]
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"{file}:{line}: a key must be a name")
            key_path = (*path, key)
            lines[key_path] = line
            result[str(key) if not isinstance(key, (int, float, bool)) else key] = plain(
                value, file, key_path, lines
            )
        return result
    if isinstance(node, CommentedSeq):
        lines.setdefault(path, node.lc.line + 1)
        return [plain(v, file, (*path, i), lines) for i, v in enumerate(node)]
    if isinstance(node, str):
        return str(node)  # ruamel's quoted-string types compare equal but are not str
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def parse(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Plain data of YAML text and the 1-based line of every key path."""
    lines: dict[Path, int] = {}
    doc = load(text, file)
    try:
        return (None if doc is None else plain(doc, file, (), lines)), lines
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None


# --------------------------------------------------------------------------------------------
# Writing


def node(value: Any, key: Any = None) -> Any:
    """A round-trip node for plain data in bincache's style: block mappings, flow lists, and
    a flow mapping for an ``access_pair`` (``{id: bot, secret_variable: TOKEN}``)."""
    if isinstance(value, dict):
        m = CommentedMap((k, node(v, k)) for k, v in value.items())
        if key == "access_pair":
            m.fa.set_flow_style()
        else:
            m.fa.set_block_style()
        return m
    if isinstance(value, list):
        s = CommentedSeq(node(v) for v in value)
        s.fa.set_flow_style()
        return s
    return value


def dump(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def dump_plain(data: Any) -> str:
    """Plain data as YAML in bincache's style."""
    return dump(node(data))


def flow(value: Any) -> str:
    """One value on one line (``[a, {variable: B}]``), as ``config blame`` prints it."""
    n = node(value)
    if isinstance(n, CommentedMap):
        n.fa.set_flow_style()
    text = dump(CommentedMap([("k", n)]))
    return text[len("k:") :].strip().removesuffix("...").strip()


def _after(m: CommentedMap, key: Any) -> tuple[Any, int]:
    """Where the comment after ``m[key]`` (and what its value holds) lives: (container, slot)."""
    value = m[key]
    if isinstance(value, CommentedMap) and value:
        return _after(value, list(value)[-1])
    if isinstance(value, CommentedSeq) and value and not value.fa.flow_style():
        return value.ca.items.setdefault(len(value) - 1, [None, None]), 0
    return m.ca.items.setdefault(key, [None, None, None, None]), 2


def _take_following(m: CommentedMap, key: Any) -> Any:
    """Detach the comment lines that follow ``m[key]`` (not its end-of-line comment)."""
    slot = _after(m, key)
    if slot[0][slot[1]] is None:
        return None
    token = slot[0][slot[1]]
    eol, nl, rest = token.value.partition("\n")
    if not rest.strip():
        return None
    token.value = eol + nl
    if not token.value.strip():
        slot[0][slot[1]] = None
    return CommentToken("\n" + rest, token.start_mark, None)


def _put_following(m: CommentedMap, key: Any, token: Any) -> None:
    if token is None:
        return
    holder, i = _after(m, key)
    old = holder[i]
    if old is not None and old.value.strip():
        old.value = old.value.rstrip("\n") + token.value
    else:
        holder[i] = token


def assign(m: CommentedMap, key: Any, value: Any) -> None:
    """Set ``m[key]`` to plain ``value`` (None deletes it), keeping what does not change:
    equal values keep their text, mappings are merged key by key, comments stay in place. A
    scalar that changes loses its end-of-line comment, which described the old value."""
    if value is None:
        if key not in m:
            return
        keys = list(m)
        # The comment lines after an entry lead into the next one (or end the file): they stay.
        follow = _take_following(m, key)
        del m[key]
        at = keys.index(key)
        if follow is not None and at > 0:
            _put_following(m, keys[at - 1], follow)
        elif follow is not None and len(keys) > 1:
            lines = [line.strip() for line in follow.value.splitlines() if line.strip()]
            text = "\n".join(line[1:].lstrip() if line.startswith("#") else line for line in lines)
            m.yaml_set_start_comment(text, indent=m.lc.col or 0)
        return
    if key not in m:
        keys = list(m)
        follow = _take_following(m, keys[-1]) if keys else None
        m[key] = node(value, key)
        _put_following(m, key, follow)
        if not keys:
            m.fa.set_block_style()  # "mirrors: {}" becomes a block mapping again
        return
    old = m[key]
    if isinstance(old, CommentedMap) and isinstance(value, dict):
        for k in [k for k in old if k not in value]:
            assign(old, k, None)
        for k, v in value.items():
            assign(old, k, v)
        return
    if plain(old, "") == value and type(plain(old, "")) is type(value):
        return
    follow = _take_following(m, key)
    comment = m.ca.items.get(key)
    if comment is not None and len(comment) > 2:
        comment[2] = None  # the end-of-line comment described the old value
    m[key] = node(value, key)
    _put_following(m, key, follow)


def keep_original_lines(original: str, before: str, after: str) -> str:
    """``after`` (an edit of ``before``, which is ruamel's rendering of ``original``) with the
    user's own text on every line the edit did not touch.

    ruamel keeps comments but not all spacing (``key:   value``, a comment's column): lines
    that are equal in ``before`` and ``after`` are taken from ``original`` where the two
    renderings align line for line. The caller checks that the result reads back as intended.
    """
    o, b, a = (t.splitlines(keepends=True) for t in (original, before, after))
    b_to_o: dict[int, str] = {}
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, o, b, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
            b_to_o.update((j1 + k, o[i1 + k]) for k in range(j2 - j1))
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, b, a, autojunk=False).get_opcodes():
        if tag == "equal":
            out.extend(b_to_o.get(i, b[i]) for i in range(i1, i2))
        else:
            out.extend(a[j1:j2])
    return "".join(out)


def write_atomic(path: str, text: str, private: bool = False) -> None:
    """Replace ``path`` by ``text`` (temp file + rename; mode kept, 0600 when ``private``)."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        if private:
            mode &= 0o600
        _atomic.write_atomic(path, text.encode("utf-8"), mode)
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror or e}") from None
