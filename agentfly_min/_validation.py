"""Check a struct's field values against their annotations when it is built.

msgspec only validates while decoding; a struct built in Python code is taken
as given. Calling :func:`check_fields` from ``__post_init__`` applies the same
``Annotated[..., Meta(...)]`` constraints to both paths, so the constraint is
written once (and also feeds JSON Schema).
"""

from __future__ import annotations

import functools
import typing

import msgspec

from .errors import ConfigError

__all__ = ["check_fields", "require", "require_positive", "HeaderName", "Headers"]

# An HTTP header: a token for the name, no line breaks in the value.
HeaderName = typing.Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
Headers = dict[HeaderName, typing.Annotated[str, msgspec.Meta(pattern=r"^[^\r\n\x00]*$")]]

_POSITIVE = typing.Annotated[float, msgspec.Meta(gt=0.0)]


@functools.cache
def _hints(cls: type[msgspec.Struct]) -> tuple[tuple[str, object], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple((name, hints[name]) for name in cls.__struct_fields__)


def check_fields(obj: msgspec.Struct) -> None:
    """Raise :class:`ConfigError` naming the first field whose value does not
    satisfy its annotation, and store what a decoder would have stored: a
    list given for a tuple field becomes a tuple, a dict for a struct field
    that struct. Nested structs are not re-checked: they checked themselves
    when they were built."""
    cls = type(obj)
    for name, hint in _hints(cls):
        value = getattr(obj, name)
        try:
            converted = msgspec.convert(value, hint, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{cls.__name__}.{name}", _explain(exc)) from None
        if type(converted) is not type(value):
            msgspec.structs.force_setattr(obj, name, converted)


def _explain(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `float` <= 1.0 - at `$[0]`"; the path is relative
    # to the converted value, which is the field itself, so "$" adds nothing.
    return str(exc).replace(" - at `$`", "")


def require(field: str, value: object, annotation: object) -> None:
    """Check one middleware argument against an annotation when the
    middleware is built, with the same wording as a config field."""
    try:
        msgspec.convert(value, annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(field, f"{_explain(exc)}, got {value!r}") from None


def require_positive(field: str, value: float) -> None:
    """Refuse a zero, negative or NaN limit when a middleware is built."""
    require(field, value, _POSITIVE)
