"""docs/configuration.md is generated from the config dataclasses; these tests keep it so."""

import dataclasses
import typing
from pathlib import Path

from radflow.pipeline.config import PipelineConfig
from radflow.pipeline.reference import COMMAND, describe_type, field_comments, options, reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_checked_in_reference_is_what_the_dataclasses_generate():
    assert PAGE.read_text() == reference(), f"docs/configuration.md is stale: run `{COMMAND}` (or `make docs`)"


def _leaves(cls, prefix=""):
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        yield from _leaves(hint, f"{path}.") if dataclasses.is_dataclass(hint) else [path]


def test_every_option_of_every_section_is_listed_with_a_meaning():
    listed = {o.path: o for opts in options().values() for o in opts}
    assert set(listed) == set(_leaves(PipelineConfig))
    undocumented = sorted(path for path, o in listed.items() if not o.meaning)
    assert not undocumented, f"give these fields a comment (it becomes their line in the reference): {undocumented}"
    assert listed["train.epochs"].kind == "integer ≥ 1" and listed["train.epochs"].default == "30"
    assert listed["evaluate.min_roc_auc"].kind == "number in [0, 1]"
    assert listed["train.lr_schedule"].kind == 'one of "constant", "exponential", "cosine"'
    assert listed["train.filters"].kind == "list of integers ≥ 1"
    assert listed["ingest.labels"].default == "[]"


def test_comments_beside_and_above_a_field_and_docstring_args_all_count():
    @dataclasses.dataclass(frozen=True)
    class Example:
        """An example.

        Args:
            documented: from the docstring,
                over two lines.
        """

        documented: int = 1  # and its own comment
        # A block above,
        # over two lines
        blocked: float | None = None
        plain: str = ""

    assert field_comments(Example) == {
        "documented": "From the docstring, over two lines. And its own comment.",
        "blocked": "A block above, over two lines.",
        "plain": "",
    }
    assert describe_type(typing.get_type_hints(Example)["blocked"]) == "number or null"
