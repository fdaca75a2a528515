"""Check a struct's field values against their annotations when it is built.

msgspec only validates while decoding; a struct built in Python code is taken
as given. Calling :func:`check_fields` from ``__post_init__`` applies the same
``Annotated[..., Meta(...)]`` constraints to both paths, so the constraint is
written once (and also feeds JSON Schema).
"""

from __future__ import annotations

import functools
import re
import types
import typing

import msgspec

from .errors import ConfigError

__all__ = ["check_fields", "require", "require_positive", "HeaderName", "Headers"]

# An HTTP header: a token for the name, no line breaks in the value.
HeaderName = typing.Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
Headers = dict[HeaderName, typing.Annotated[str, msgspec.Meta(pattern=r"^[^\r\n\x00]*$")]]

_POSITIVE = typing.Annotated[float, msgspec.Meta(gt=0.0)]


_Accept: typing.TypeAlias = typing.Callable[[object], bool]

_SCALARS = (str, int, float, bool)


def _accepts(hint: object) -> _Accept | None:
    """A fast test that says True only for values that ``msgspec.convert``
    would take unchanged (``None`` when there is none for this hint). A False
    sends the value to ``convert``, which decides and explains."""
    origin = typing.get_origin(hint)
    if hint in _SCALARS:
        exact = hint
        return lambda value: type(value) is exact
    if hint is type(None):
        return lambda value: value is None
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        struct = hint
        return lambda value: type(value) is struct  # it checked itself when built
    if origin is typing.Literal:
        allowed = frozenset(typing.get_args(hint))
        kinds = frozenset(type(a) for a in allowed)
        return lambda value: type(value) in kinds and value in allowed
    if origin is typing.Union or origin is types.UnionType:
        branches = [_accepts(arg) for arg in typing.get_args(hint)]
        if any(b is None for b in branches):
            return None
        tests = typing.cast("list[_Accept]", branches)
        # No generator for ``any``: this runs for every field of every record.
        if len(tests) == 2:  # ``X | None``, the common case
            first, second = tests
            return lambda value: first(value) or second(value)

        def any_branch(value: object) -> bool:
            for test in tests:
                if test(value):
                    return True
            return False

        return any_branch
    if origin is typing.Annotated:
        return _accepts_constrained(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        # Structs only: for a tuple of ints convert's C loop beats a Python one.
        if len(args) == 2 and args[1] is Ellipsis and not (isinstance(args[0], type) and args[0] in _SCALARS):
            item = _accepts(args[0])
            if item is None:
                return None
            each = item
            return lambda value: type(value) is tuple and all(each(v) for v in value)
    return None  # dicts, anything else: convert decides


_BOUNDS = ("ge", "gt", "le", "lt")
_LENGTHS = ("min_length", "max_length")


def _accepts_constrained(hint: object) -> _Accept | None:
    """A fast test for ``Annotated[base, Meta(...)]`` with bounds on a number,
    or a pattern or length bounds on a string or a tuple: the constraints a
    record's fields use, checked without ``convert`` (and without hashing
    the typing object, which costs more than the check)."""
    base, *extras = typing.get_args(hint)
    metas = [m for m in extras if isinstance(m, msgspec.Meta)]
    inner = _accepts(base)
    if inner is None or len(metas) != len(extras):
        return None
    test = inner
    known = {"description", "examples", "extra", "extra_json_schema", "title"}  # documentation only
    for meta in metas:
        used = {name for name in dir(meta) if not name.startswith("_") and getattr(meta, name) is not None} - known
        if base in (int, float) and used <= set(_BOUNDS):
            test = _within(test, meta)
        elif (base is str or typing.get_origin(base) is tuple) and used <= {"pattern", *_LENGTHS}:
            test = _sized(test, meta)
        else:
            return None  # multiple_of, tz, ...: convert decides
    return test


def _within(test: _Accept, meta: msgspec.Meta) -> _Accept:
    ge, gt, le, lt = (getattr(meta, name) for name in _BOUNDS)

    def accept(value: object) -> bool:
        if not test(value):
            return False
        number = typing.cast(float, value)
        # NaN fails every comparison, so it falls through to convert.
        return (
            (ge is None or number >= ge)
            and (gt is None or number > gt)
            and (le is None or number <= le)
            and (lt is None or number < lt)
        )

    return accept


def _sized(test: _Accept, meta: msgspec.Meta) -> _Accept:
    low, high = meta.min_length, meta.max_length
    pattern = re.compile(meta.pattern) if meta.pattern is not None else None

    def accept(value: object) -> bool:
        if not test(value):
            return False
        sized = typing.cast("str | tuple[object, ...]", value)
        if (low is not None and len(sized) < low) or (high is not None and len(sized) > high):
            return False
        # msgspec matches a pattern with re.search, unanchored.
        return pattern is None or pattern.search(typing.cast(str, sized)) is not None

    return accept


@functools.cache
def _checks(cls: type[msgspec.Struct]) -> tuple[tuple[str, object, _Accept | None, object], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = cls.__struct_fields__
    defaults = cls.__struct_defaults__
    missing = object()
    padded = (missing,) * (len(fields) - len(defaults)) + tuple(defaults)
    return tuple((name, hints[name], _accepts(hints[name]), default) for name, default in zip(fields, padded, strict=True))


def check_fields(obj: msgspec.Struct) -> None:
    """Raise :class:`ConfigError` naming the first field whose value does not
    satisfy its annotation, and store what a decoder would have stored: a
    list given for a tuple field becomes a tuple, a dict for a struct field
    that struct. Nested structs are not re-checked: they checked themselves
    when they were built.

    Records are built on every turn of every chain, so the common cases are
    settled without ``msgspec.convert``: a value that is its field's default
    (the class's own, valid by construction), and values whose type alone
    proves them valid (a ``str`` for ``str``, a struct for its own type, a
    tuple of those), and numbers, strings and tuples within their declared
    bounds, pattern or lengths. Anything else goes to ``convert``, which
    decides and explains."""
    cls = type(obj)
    # One C call for every value: a getattr per field cost more than the checks.
    for (name, hint, accept, default), value in zip(_checks(cls), msgspec.structs.astuple(obj), strict=True):
        if value is default or (accept is not None and accept(value)):
            continue
        try:
            converted = msgspec.convert(value, hint, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{cls.__name__}.{name}", _explain(exc)) from None
        if converted is not value:  # a list made a tuple, a dict inside a tuple made a struct
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
