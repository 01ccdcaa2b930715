"""mkdocs hook: the table of TrainConfig's keys in api.md, built from the dataclass itself.

TrainConfig documents each key in its field's ``metadata["help"]`` (what ``asymgrpo train
--help`` prints), which a docstring renderer does not show. This hook replaces the marker line
in a page with a Markdown table of every field: key, type, default and help text, so the
reference cannot drift from the code. It imports ``asymgrpo.config`` (and so torch).
"""

from __future__ import annotations

import dataclasses

MARKER = "<!-- train-config-keys -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _cell(text).replace("`", "'") + "`"


def config_table() -> str:
    from asymgrpo.config import TrainConfig

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(TrainConfig):
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        rows.append(
            f"| {_code(field.name)} | {_code(kind)} | {_code(default)} | {_cell(field.metadata.get('help', ''))} |"
        )
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, config_table())
