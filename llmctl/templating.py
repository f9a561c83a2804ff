"""Where the Jinja2 templates are (shipped in the wheel as llmctl/templates, or the checkout's
top-level templates/), and the one way to load them: StrictUndefined, no autoescape (each
renderer escapes every value for its own format). jinja2 is imported inside `environment`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmctl.errors import NotFound


def templates_dir() -> Path:
    """The templates shipped in the wheel (llmctl/templates), or the checkout's top-level templates/."""
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "templates", pkg.parent / "templates"):
        if (candidate / "server.service.j2").is_file():
            return candidate
    raise NotFound(f"the templates are missing (looked in {pkg / 'templates'})", hint="reinstall llmctl")


def environment(subdir: str | None = None, **options: Any):
    """A jinja2.Environment over templates_dir() (or one of its sub-directories)."""
    import jinja2

    root = templates_dir() if subdir is None else templates_dir() / subdir
    settings: dict[str, Any] = dict(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    settings.update(options)
    return jinja2.Environment(**settings)
