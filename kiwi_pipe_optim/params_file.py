"""Reading a params file: YAML with the line of every key, and pydantic's errors in our words.

A message is only useful if it points at the line to fix, so every dotted key (list items
included: ``optimizer.param_groups.2.lr``) is mapped to its line while the file is parsed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ConfigError, Problem, choices, did_you_mean, show
from .fields import Problems
from .specs import OPTIMIZER_SPECS

SECTION = "optimizer"
_MISSING_HINTS = {
    "class_name": f"choose one of: {choices(OPTIMIZER_SPECS)}",
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
    try:
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
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
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
