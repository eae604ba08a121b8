"""Reading a params file: YAML with the line of every key, and pydantic's errors in our words.

A message is only useful if it points at the line to fix, so every dotted key (list items
included: ``optimizer.param_groups.2.lr``) is mapped to its line while the file is parsed.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, Problem, choices, did_you_mean, show
from .fields import Problems
from .specs import OPTIMIZER_SPECS

SECTION = "optimizer"
MAX_BYTES = 1 << 20  # a params file is a few hundred lines; a bigger one is a mistake or an attack
MAX_NODES = 100_000  # after expanding aliases: an alias bomb ("billion laughs") stops here
MAX_DEPTH = 64
_MISSING_HINTS = {
    "class_name": f"choose one of: {choices(OPTIMIZER_SPECS)}, or 'package.module:ClassName'",
    "learning_rate": "use a positive float such as 0.001",
}


def read_params(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a YAML params file; return its data and the line of every dotted key.

    Raises:
        ConfigError: the file cannot be read, is not UTF-8 text, is not valid YAML, or is not a
            mapping at the top level. The message names the file and, for syntax errors, the line.
    """
    import yaml  # a params file is read rarely; keep the import off the package's import path

    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise ConfigError(Problem("", "is a directory; pass a YAML file"), source)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(Problem("", f"the file is {size:,} bytes; a params file is at most {MAX_BYTES:,}"), source)
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(Problem("", f"cannot read the params file ({e.strerror or e}); "
                                      f"pass an existing YAML file"), source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(Problem("", f"not a text file (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                                      f"a params file is UTF-8 YAML"), source) from None
    if "\x00" in text:
        raise ConfigError(Problem("", "not a text file (it contains NUL bytes); a params file is UTF-8 YAML"), source)
    _check_flow_depth(text, source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_shape(node, source)
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except ConfigError as e:
        raise e.with_source(source) from None
    except RecursionError:
        raise ConfigError(Problem("", f"nesting deeper than {MAX_DEPTH} levels; a params file is a few levels "
                                      f"deep"), source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        problem = Problem("", f"invalid YAML: {what}; fix the syntax (indentation, ':' after keys, closed quotes)",
                          line=mark.line + 1 if mark else None)
        raise ConfigError(problem, source=source) from None
    if data is None:
        raise ConfigError(Problem("", "the file is empty; expected sections such as 'optimizer:'"), source)
    if not isinstance(data, dict):
        raise ConfigError(Problem("", f"expected a mapping of sections at the top level, got "
                                      f"{type(data).__name__}"), source)
    return data, key_lines(node)


@functools.cache
def _unique_key_loader() -> type:
    """A SafeLoader that refuses a key written twice in one mapping (the last would silently win;
    DVC refuses such a file too)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key, _ in node.value:
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise ConfigError(Problem("", f"key '{key.value}' is written twice in one mapping (lines "
                                                  f"{seen[key.value]} and {line}); keep one", line=line))
                seen[key.value] = line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def _check_flow_depth(text: str, source: str) -> None:
    """Brackets nested beyond ``MAX_DEPTH`` (``[[[[...``), found in one pass before the YAML
    parser, which would otherwise recurse through every level before giving up."""
    depth = 0
    for line_number, line in enumerate(text.splitlines(), 1):
        for char in line:
            if char in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(Problem("", f"nesting deeper than {MAX_DEPTH} levels; a params file is a few "
                                                  f"levels deep", line=line_number), source)
            elif char in "]}":
                depth = max(0, depth - 1)


def _check_shape(root: Any, source: str) -> None:
    """Refuse, before building anything, a document that would expand beyond ``MAX_NODES``
    nodes (aliases counted each time they are used) or nest deeper than ``MAX_DEPTH``."""
    import yaml

    sizes: dict[int, int] = {}
    depth_of: dict[int, int] = {}

    def visit(node: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError(Problem("", f"nesting deeper than {MAX_DEPTH} levels; a params file is a few levels "
                                          f"deep", line=node.start_mark.line + 1), source)
        if id(node) in sizes and depth_of[id(node)] >= depth:
            return sizes[id(node)]
        children = []
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        size = 1
        for child in children:
            size += visit(child, depth + 1)
            if size > MAX_NODES:
                raise ConfigError(Problem("", f"the document expands to more than {MAX_NODES:,} values (aliases "
                                              f"repeat what they point to); write the values out",
                                          line=node.start_mark.line + 1), source)
        sizes[id(node)], depth_of[id(node)] = size, depth
        return size

    if root is not None:
        visit(root, 0)


def find_section(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted location (``system.optimizer``, where OpenKiwi's files keep it).

    Raises:
        KeyError: some part of the location is missing.
    """
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def optimizer_sections(data: Any, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted locations of mappings named ``optimizer`` that have a ``class_name``."""
    found: list[str] = []
    if isinstance(data, dict) and depth > 0:
        for key, value in data.items():
            name = f"{prefix}{key}"
            if key == "optimizer" and isinstance(value, dict) and "class_name" in value:
                found.append(name)
            found.extend(optimizer_sections(value, name + ".", depth - 1))
    return found


def missing_section(data: dict[str, Any], section: str) -> Problem:
    """A missing optimizer section; pointing at one found elsewhere (OpenKiwi's ``system.optimizer``)."""
    elsewhere = [s for s in optimizer_sections(data) if s != section]
    if elsewhere:
        return Problem(section, f"missing section; this file has one at {elsewhere[0]}: pass --section "
                                f"{elsewhere[0]} (OpenKiwi's files keep it there)")
    return Problem(section, f"missing section; add '{section}:' with class_name and learning_rate")


def key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """The 1-based line of every dotted key under a composed YAML node; list items by index."""
    import yaml

    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        children = [(f"{prefix}{key.value}", key, value) for key, value in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{prefix}{i}", item, item) for i, item in enumerate(node.value)]
    else:
        return lines
    for name, where, value in children:
        lines[name] = where.start_mark.line + 1
        lines.update(key_lines(value, name + "."))
    return lines


def problems_from(error: ValidationError, model: type[BaseModel], section: str) -> list[Problem]:
    """pydantic's errors, rewritten as ``section.field: what is wrong; what is allowed``."""
    problems: list[Problem] = []
    allowed = list(model.model_fields)
    for err in error.errors():
        loc = ".".join(str(part) for part in err["loc"])
        path = f"{section}.{loc}" if loc else section
        kind = err["type"]
        value = err.get("input")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            problems.extend(Problem(f"{path}.{p.path}", p.message) for p in cause.problems)
        elif kind == "extra_forbidden":
            name = str(err["loc"][-1])
            problems.append(Problem(path, f"unknown key{did_you_mean(name, allowed)}; allowed keys: {', '.join(allowed)}"))
        elif kind == "missing":
            problems.append(Problem(path, f"required; {_MISSING_HINTS.get(loc, 'give a value')}"))
        elif cause is not None:
            problems.append(Problem(path, str(cause)))
        elif kind.startswith("int"):
            problems.append(Problem(path, f"{show(value)} is not a whole number; use an integer"))
        elif kind.startswith("float"):
            problems.append(Problem(path, f"{show(value)} is not a number; use a float"))
        elif kind.startswith("string"):
            problems.append(Problem(path, f"{show(value)} is not text; use a string"))
        elif kind.startswith("path"):
            problems.append(Problem(path, f"{show(value)} is not a file path; use a path such as state.pt"))
        else:
            problems.append(Problem(path, f"{show(value)}: {err['msg']}"))
    return problems
