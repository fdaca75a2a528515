"""Images for vision-language messages: an image part from a URL, a file,
bytes or a PIL image, and a user message holding text and images.

Images travel as OpenAI's ``image_url`` parts: an ``http(s)`` URL the
server fetches, or a ``data:`` URI carrying the bytes (what AgentFly makes
for its API backends). The type is read from the bytes' signature, not
from a file name, so a mislabelled file is still sent as what it is.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any, Literal

from .errors import ConfigError
from .records import ImagePart, ImageURL, Message, TextPart

__all__ = ["image_part", "image_message", "image_mime"]

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_mime(data: bytes) -> str | None:
    """The image type of ``data`` by its signature (PNG, JPEG, GIF, WebP,
    BMP), or None when it is none of those."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    return None


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_part(
    source: str | os.PathLike[str] | bytes | Any, *, detail: Literal["auto", "low", "high"] | None = None
) -> ImagePart:
    """An image part from ``source``:

    - a ``str`` starting ``http://``, ``https://`` or ``data:image/``: kept
      as it is (the server fetches a URL);
    - a path (``str`` or ``os.PathLike``) or ``bytes``: read and sent as a
      ``data:`` URI of the type its bytes say (PNG, JPEG, GIF, WebP, BMP);
    - a PIL image: written as PNG into a ``data:`` URI.

    Anything else, or bytes that are not an image, raise :class:`ConfigError`.
    """
    if isinstance(source, str) and source.startswith(("http://", "https://", "data:image/")):
        return ImagePart(image_url=ImageURL(url=source, detail=detail))
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError("image_part.source", f"cannot read {os.fspath(source)!r}: {exc.strerror or exc}") from None
        return image_part(data, detail=detail)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        mime = image_mime(data)
        if mime is None:
            raise ConfigError("image_part.source", f"not a PNG, JPEG, GIF, WebP or BMP image (starts {data[:8]!r})")
        return ImagePart(image_url=ImageURL(url=_data_uri(data, mime), detail=detail))
    if callable(getattr(source, "save", None)) and hasattr(source, "mode"):  # a PIL image, without importing PIL
        buffer = io.BytesIO()
        image = source if source.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16") else source.convert("RGBA")
        image.save(buffer, format="PNG")
        return ImagePart(image_url=ImageURL(url=_data_uri(buffer.getvalue(), "image/png"), detail=detail))
    raise ConfigError(
        "image_part.source", f"a URL, a path, bytes or a PIL image, not {type(source).__name__}"
    )


def image_message(text: str, *images: str | os.PathLike[str] | bytes | Any, detail: Literal["auto", "low", "high"] | None = None) -> Message:
    """A user message with ``text`` and then each image (anything
    :func:`image_part` takes)."""
    parts: tuple[TextPart | ImagePart, ...] = (TextPart(text=text), *(image_part(i, detail=detail) for i in images))
    return Message(role="user", content=parts)
