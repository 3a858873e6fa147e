"""Render the project's Jinja2 templates (templates/): strict about undefined names.

jinja2 is an optional dependency (`pip install 'arch[delivery]'`); without it the caller gets a
RenderError saying so, never an ImportError traceback.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from arch.delivery.resources import templates_dir

if TYPE_CHECKING:
    from collections.abc import Mapping

INSTALL_HINT = "pip install 'arch[delivery]'"


class RenderError(Exception):
    """A template could not be rendered (missing jinja2, missing template, template error)."""


def render_template(name: str, context: Mapping[str, Any]) -> str:
    """templates/NAME rendered with `context`; every name the template uses must be defined."""
    try:
        import jinja2
    except ImportError as error:
        raise RenderError(f"rendering templates needs jinja2 ({INSTALL_HINT}): {error}") from None
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # shell scripts and JSON, never HTML
    )
    environment.filters["shquote"] = shlex.quote
    try:
        return environment.get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {name} not found in {templates_dir()}") from None
    except jinja2.TemplateError as error:
        raise RenderError(f"template {name}: {error}") from None
