"""Checks config values against the config dataclasses before any stage runs, one line per problem.

The dataclasses are the schema: their type hints (with the bounds of `radflow.config_types`
and Literal choices) and their `__post_init__` checks. pydantic's TypeAdapter validates plain
values against them in strict mode, so "ten", "64" and "no" are refused rather than converted,
and every problem is reported with its field path and, for a YAML file, its line and column:

    my.yaml:4:11: train.epochs: expected an integer, got 'ten'

A new field is checked as soon as it is declared; nothing here lists fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
Path = tuple[str | int, ...]
Marks = dict[Path, str]  # a field path -> "file:line:column" of its value (or of its key, for a key)

# pydantic error types -> what was expected, in the words of a config file.
_EXPECTED = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "float_type": "a number",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dataclass_type": "a mapping of options",
    "dict_type": "a mapping",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class ConfigError(ValueError):
    """Everything wrong with a config, one problem a line, each naming its field.

    Args:
        problems: lines like "train.epochs: expected an integer, got 'ten'", prefixed with
            "file:line:column: " when the value came from a file.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@functools.cache
def _adapter(cls: type):
    import pydantic  # here, not at import: `radflow --help` and compiling need no validator

    return pydantic.TypeAdapter(cls)


def check(cls: type[T], values: dict[str, Any], prefix: Path = (), marks: Marks | None = None) -> T:
    """Builds config class `cls` from plain values, refusing anything that does not fit its fields.

    Args:
        cls: a config dataclass, possibly with nested config dataclasses.
        values: field name -> value, as JSON or YAML has them (lists for tuples); missing fields
            keep their defaults.
        prefix: the path of `cls` in a larger config, e.g. ("train",), for the messages.
        marks: where each value was written (see `read_yaml`), for the messages.

    Returns:
        The config.

    Raises:
        ConfigError: every unknown key, wrong type, value out of bounds or refused value at once.
    """
    import pydantic

    marks = marks or {}
    problems = _unknown_keys(cls, values, prefix, marks, _all_fields(cls, prefix))
    try:
        config = _adapter(cls).validate_json(json.dumps(values, default=str), strict=True)
    except pydantic.ValidationError as err:
        problems += [_describe(e, cls, prefix, marks) for e in err.errors()]
        config = None
    if problems:
        raise ConfigError(sorted(problems, key=_position))
    return config


def _position(problem: str) -> tuple[int, int]:
    """(line, column) of a "file:line:column: ..." problem, so that problems read in file order."""
    parts = problem.split(":", 3)
    if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return 0, 0


def _where(path: Path, marks: Marks) -> str:
    """ "file:line:column: " of the nearest written ancestor of `path`, or ""."""
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            return f"{marks[path[:end]]}: "
    return ""


def _dotted(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "config"


def _all_fields(cls: type, prefix: Path = ()) -> dict[str, list[str]]:
    """Every field name under `cls` -> the dotted paths that have it (for "did you mean")."""
    found: dict[str, list[str]] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        found.setdefault(f.name, []).append(_dotted((*prefix, f.name)))
        if dataclasses.is_dataclass(hint):
            for name, paths in _all_fields(hint, (*prefix, f.name)).items():
                found.setdefault(name, []).extend(paths)
    return found


def _unknown_keys(cls: type, values: Any, prefix: Path, marks: Marks, everywhere: dict[str, list[str]]) -> list[str]:
    """A line for every key that is not a field, with the field it probably meant (`everywhere`: `_all_fields`)."""
    import difflib

    if not isinstance(values, dict):
        return []  # pydantic names the wrong type
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key, value in values.items():
        path = (*prefix, str(key))
        if key in names:
            if dataclasses.is_dataclass(hints[key]):
                problems += _unknown_keys(hints[key], value, path, marks, everywhere)
            continue
        elsewhere = everywhere.get(str(key), [])
        close = difflib.get_close_matches(str(key), names, n=1)
        if elsewhere:
            hint = f"did you mean {' or '.join(elsewhere)}?"
        elif close:
            hint = f"did you mean {_dotted((*prefix, close[0]))}?"
        else:
            hint = f"the options here are {', '.join(names)}"
        problems.append(f"{_where(('key', *path), marks)}{_dotted(path)}: unknown option; {hint}")
    return problems


def _describe(error: dict[str, Any], cls: type, prefix: Path, marks: Marks) -> str:
    """One pydantic error as "[where: ]field.path: expected ..., got ..."."""
    path = (*prefix, *error["loc"])
    kind, ctx, found = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "value_error":  # a __post_init__ check; its message usually starts with the field's name
        message = str(ctx.get("error", error["msg"]))
        owner = _field_type(cls, error["loc"])
        first, _, rest = message.partition(" ")
        if owner and first in {f.name for f in dataclasses.fields(owner)}:
            path, message = (*path, first), rest
        return f"{_where(path, marks)}{_dotted(path)}: {message}"
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        expected = f"a value {_BOUNDS[kind]} {bound:g}"
    elif kind == "literal_error":
        expected = f"one of {ctx['expected']}"
    else:
        expected = error["msg"][0].lower() + error["msg"][1:]
    shown = repr(found)
    return f"{_where(path, marks)}{_dotted(path)}: expected {expected}, got {shown[:80]}"


def _field_type(cls: type, loc: tuple) -> type | None:
    """The config dataclass at `loc` under `cls` (the one whose __post_init__ refused), or None."""
    for name in loc:
        hint = typing.get_type_hints(cls).get(name) if isinstance(name, str) else None
        if not dataclasses.is_dataclass(hint):
            return None
        cls = hint
    return cls


def read_yaml(path: str) -> tuple[Any, Marks]:
    """A YAML file's values and where each one is written.

    Args:
        path: the file.

    Returns:
        (values, marks): marks maps each value's path to "file:line:column", and ("key", *path)
        to its key's position.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: the file is not valid YAML (at its line and column), or repeats a key.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} not found") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        values = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError([f"{where}: not valid YAML: {err.problem or err.context}"]) from None
    finally:
        loader.dispose()
    marks: Marks = {}
    problems: list[str] = []
    if node is not None:
        _mark(node, (), path, marks, problems)
    if problems:
        raise ConfigError(problems)
    return values, marks


def _mark(node: yaml.Node, at: Path, path: str, marks: Marks, problems: list[str]) -> None:
    def position(n: yaml.Node) -> str:
        return f"{path}:{n.start_mark.line + 1}:{n.start_mark.column + 1}"

    marks[at] = position(node)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                problems.append(f"{position(key)}: {_dotted((*at, name))}: given twice (first on line "
                                f"{seen[name].start_mark.line + 1})")
            seen[name] = key
            marks[("key", *at, name)] = position(key)
            _mark(value, (*at, name), path, marks, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _mark(item, (*at, i), path, marks, problems)
