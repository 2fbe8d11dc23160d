"""The configuration reference, docs/configuration.md, generated from the config dataclasses.

Every option's type, bounds, default and meaning come from its declaration: the type hint (with
`radflow.config_types` bounds and Literal choices), the default, and the comments beside and
above the field (or the class docstring's `Args:` entry). The page therefore cannot drift from
the code; a test regenerates it and fails when the checked-in page differs.

    radflow config reference > docs/configuration.md      (or: make docs)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from typing import Any

import annotated_types

from radflow.pipeline.config import PipelineConfig, to_dict

COMMAND = "radflow config reference > docs/configuration.md"
_NAMES = {int: "integer", float: "number", bool: "true/false", str: "string"}


@dataclasses.dataclass(frozen=True)
class Option:
    """One documented field.

    Args:
        path: dotted path in a config file, e.g. "train.epochs".
        kind: the type in words, with bounds or choices, e.g. "integer ≥ 1".
        default: the default as JSON, e.g. "30".
        meaning: the field's comments, joined.
    """

    path: str
    kind: str
    default: str
    meaning: str


def field_comments(cls: type) -> dict[str, str]:
    """Each field's description: its docstring `Args:` entry, the comment block above it, its own comment.

    Args:
        cls: a dataclass defined in a source file.

    Returns:
        field name -> text ("" for a field with none).
    """
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    documented = _args_of(inspect.getdoc(cls) or "")
    found = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        parts = [documented.get(node.target.id, ""), " ".join(above), comments.get(node.end_lineno, "")]
        found[node.target.id] = " ".join(_sentence(p) for p in parts if p)
    return found


def _sentence(text: str) -> str:
    """A comment as a sentence, so that a block above a field and the field's own comment read as two."""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!", ")")) else text + "."


def _args_of(docstring: str) -> dict[str, str]:
    """The entries of a Google-style docstring's Args: section."""
    entries: dict[str, str] = {}
    name = None
    in_args = False
    for line in docstring.splitlines():
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break
        match = re.match(r"^    (\w+): (.*)$", line)
        if in_args and match:
            name = match.group(1)
            entries[name] = match.group(2).strip()
        elif in_args and name and line.startswith("        "):
            entries[name] += " " + line.strip()
    return entries


def describe_type(hint: Any) -> str:
    """A type hint in a config file's words, e.g. "number in [0, 1] or null", "list of strings".

    Args:
        hint: a hint from typing.get_type_hints(..., include_extras=True).

    Returns:
        The description.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return " ".join([describe_type(args[0]), *(_bound(m) for m in args[1:])]).strip()
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if origin is tuple:
        inner = describe_type(args[0])
        first, _, rest = inner.partition(" ")
        return f"list of {first}s" + (f" {rest}" if rest else "")
    if dataclasses.is_dataclass(hint):
        return "section"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _bound(meta: Any) -> str:
    if isinstance(meta, annotated_types.Interval):
        low = "[" if meta.ge is not None else "(" if meta.gt is not None else ""
        high = "]" if meta.le is not None else ")" if meta.lt is not None else ""
        lo, hi = meta.ge if meta.ge is not None else meta.gt, meta.le if meta.le is not None else meta.lt
        if lo is not None and hi is not None:
            return f"in {low}{lo:g}, {hi:g}{high}"
        return f"≥ {lo:g}" if meta.ge is not None else f"> {lo:g}" if lo is not None else f"≤ {hi:g}"
    for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if hasattr(meta, attr):
            return f"{sign} {getattr(meta, attr):g}"
    return ""


def options(cls: type = PipelineConfig, prefix: str = "") -> dict[str, list[Option]]:
    """Every option under `cls`, grouped by section ("" for the top level), in declaration order.

    Args:
        cls: a config dataclass.
        prefix: its dotted path in the config.

    Returns:
        section path -> its options; nested sections follow their parent.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    plain = typing.get_type_hints(cls)
    defaults = to_dict(cls())
    comments = field_comments(cls)
    sections: dict[str, list[Option]] = {prefix: []}
    nested = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(plain[f.name]):
            nested.append((plain[f.name], path))
            continue
        sections[prefix].append(Option(path, describe_type(hints[f.name]), json.dumps(defaults[f.name]),
                                       comments.get(f.name, "")))
    for sub, path in nested:
        sections.update(options(sub, path))
    return sections


def _classes(cls: type = PipelineConfig, prefix: str = "") -> dict[str, type]:
    found = {prefix: cls}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            found.update(_classes(hint, f"{prefix}.{name}" if prefix else name))
    return found


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: "|" would end the cell and "<name>" would vanish as HTML."""
    return re.sub(r"([|<>])", r"\\\1", text).replace("\n", " ")


def _code_cell(text: str) -> str:
    """Text safe in a code span in a table cell: only "|" needs escaping there."""
    return text.replace("|", "\\|")


def _source_file(cls: type) -> str:
    """The repository file of a class: radflow.components.x.config lives in components/x/config.py."""
    parts = cls.__module__.split(".")
    if parts[0] == "radflow" and len(parts) > 1 and parts[1] in ("components", "pipeline", "serving"):
        parts = parts[1:]
    return "/".join(parts) + ".py"


def reference() -> str:
    """The whole configuration reference page, as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses, do not edit by hand: after changing a config field, run",
        f"`{COMMAND}` (or `make docs`). `tests/test_config_reference.py` fails while",
        "this page and the code differ.",
        "",
        "A config file is YAML whose keys mirror the sections below, e.g. `train: {epochs: 10}`; every",
        "key is optional and keeps the default shown. `radflow run --config FILE` (and every other",
        "command with `--config`) checks the whole file before anything runs and names each problem",
        "by line, column and option; `radflow config check FILE` does only that. Ready examples:",
        "[configs/](../configs/).",
        "",
    ]
    classes = _classes()
    for section, opts in options().items():
        cls = classes[section]
        doc = inspect.getdoc(cls) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ") if not doc.startswith(cls.__name__ + "(") else ""
        out += [f"## {section or 'Top level'}", "", f"`{cls.__name__}` in `{_source_file(cls)}`."
                + (f" {summary}" if summary else ""), ""]
        if not opts:
            continue
        out += ["| option | type | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{o.path}` | {_cell(o.kind)} | `{_code_cell(o.default)}` | {_cell(o.meaning)} |" for o in opts]
        out.append("")
    return "\n".join(out)
