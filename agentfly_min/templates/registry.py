"""The registry of templates by name: the built-in families are registered
when it is first imported; :func:`register_template` adds one."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Template
from .families import BUILT_IN

__all__ = ["register_template", "get_template", "template_names"]


_REGISTRY: dict[str, Template] = {}


def register_template(template: Template, *, replace: bool = False) -> Template:
    """Make ``template`` available by its name (``Agent(template=name)``).
    A name already taken is refused unless ``replace``."""
    if template.name in _REGISTRY and not replace:
        raise ConfigError("register_template", f"a template named {template.name!r} is registered already")
    _REGISTRY[template.name] = template
    return template


def get_template(name: str) -> Template:
    """The template registered as ``name``; a :class:`ConfigError` naming
    the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("template", f"no template named {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def template_names() -> list[str]:
    return sorted(_REGISTRY)


for _template in BUILT_IN:
    register_template(_template)
