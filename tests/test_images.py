"""Images in messages: the parts, the helper that makes them, what the
client sends (checked on the wire of the fake server), the agent loop with
an image task over the chat endpoint, and the token-level paths refusing
images instead of dropping them."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import msgspec
import pytest
from PIL import Image

from agentfly_min import Agent, ClientConfig, ConfigError, Message, PermanentError, Request, collect, open_backend, open_stream, run_agent
from agentfly_min.images import image_message, image_mime, image_part
from agentfly_min.records import ImagePart, ImageURL, TextPart
from agentfly_min.testing import FakeOpenAIServer
from agentfly_min.templates.chat import prompt_ids

pytestmark = pytest.mark.anyio


def png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(part: ImagePart) -> Image.Image:
    header, _, data = part.image_url.url.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_image_parts_from_files_bytes_pil_images_and_urls(tmp_path: Path) -> None:
    raw = png()
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 90, 0)).save(jpeg, format="JPEG")
    (tmp_path / "mislabelled.txt").write_bytes(jpeg.getvalue())

    from_bytes = image_part(raw)
    assert from_bytes.image_url.url.startswith("data:image/png;base64,")
    assert decoded(from_bytes).size == (8, 6)
    from_file = image_part(tmp_path / "mislabelled.txt", detail="low")
    assert from_file.image_url.url.startswith("data:image/jpeg;base64,")  # the bytes say JPEG, not the name
    assert from_file.image_url.detail == "low"
    from_pil = image_part(Image.new("RGBA", (3, 5), (1, 2, 3, 4)))
    assert decoded(from_pil).size == (3, 5) and decoded(from_pil).getpixel((0, 0)) == (1, 2, 3, 4)
    from_cmyk = image_part(Image.new("CMYK", (2, 2)))
    assert decoded(from_cmyk).mode == "RGBA"
    assert image_part("https://example.org/cat.png").image_url.url == "https://example.org/cat.png"
    assert image_part(from_bytes.image_url.url) == from_bytes


def test_what_is_not_an_image_is_refused_at_the_boundary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a PNG, JPEG"):
        image_part(b"%PDF-1.7 not an image")
    with pytest.raises(ConfigError, match="cannot read"):
        image_part(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="not int"):
        image_part(42)
    with pytest.raises(ConfigError, match="ImageURL.url"):
        ImageURL(url="file:///etc/passwd")
    with pytest.raises(msgspec.ValidationError, match="ImageURL.url"):  # decoding names where it is
        msgspec.json.decode(b'{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}', type=Message)
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp" and image_mime(b"GIF89a") == "image/gif"


def test_messages_hold_text_and_images_in_the_openai_shape() -> None:
    wire = (
        b'{"role": "user", "content": [{"type": "text", "text": "what is "}, '
        b'{"type": "image_url", "image_url": {"url": "https://example.org/a.png", "detail": "high"}}, '
        b'{"type": "text", "text": "this?"}]}'
    )
    message = msgspec.json.decode(wire, type=Message)
    assert message.text == "what is this?"
    assert [p.image_url.url for p in message.images] == ["https://example.org/a.png"]
    assert msgspec.json.decode(msgspec.json.encode(message)) == msgspec.json.decode(wire)
    built = image_message("compare", png(), png((0, 0, 255)))
    assert [type(p) for p in built.content or ()] == [TextPart, ImagePart, ImagePart]
    assert Message(role="user", content="plain").images == ()


async def test_the_client_sends_image_parts_as_they_are(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    message = image_message("describe", png(), "https://example.org/b.png", detail="low")
    settings = ClientConfig(base_url=fake_server.base_url, api_key="k", model="fake-echo", max_retries=0)
    async with open_backend(settings) as generate:
        completion = await generate(Request(messages=(message,)))
    async with open_stream(settings) as stream:
        streamed = await collect(stream, Request(messages=(message,)))
    assert completion.outputs[0].text == streamed.outputs[0].text == "echo: describe [image_url] [image_url]"
    seen = [s for s in fake_server.requests() if s.path.endswith("/chat/completions")]
    assert len(seen) == 2
    for call in seen:
        (sent,) = call.body["messages"]
        assert sent == msgspec.json.decode(msgspec.json.encode(message))
        assert sent["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
        assert sent["content"][2] == {"type": "image_url", "image_url": {"url": "https://example.org/b.png", "detail": "low"}}


async def test_an_agent_episode_with_an_image_over_the_chat_endpoint(fake_server: FakeOpenAIServer) -> None:
    fake_server.configure()
    settings = ClientConfig(base_url=fake_server.base_url, api_key="k", model="fake-echo", max_retries=0)
    agent = Agent(model_name_or_path="fake-echo", backend="client", backend_config=settings, max_turns=1)
    task: dict[str, Any] = {"messages": [msgspec.to_builtins(image_message("what colour?", png()))]}
    async with open_backend(settings) as generate:
        trajectory = await run_agent(agent, generate, task)
    assert trajectory.error is None
    assert trajectory.messages[0].images and trajectory.messages[-1].text == "echo: what colour? [image_url]"


async def test_token_level_paths_refuse_images_instead_of_dropping_them(fake_server: FakeOpenAIServer, tokenizer: Any) -> None:
    message = image_message("what colour?", png())
    with pytest.raises(PermanentError, match="images need the chat endpoint"):
        prompt_ids(tokenizer, Request(messages=(message,)))  # what the in-process vLLM and verl transports call
    with pytest.raises(PermanentError, match="images need the chat endpoint"):
        prompt_ids(tokenizer, Request(messages=(message,), prompt_ids=(1, 2, 3)))
    fake_server.configure()
    tokens = ClientConfig(base_url=fake_server.base_url, api_key="k", model="fake-echo", max_retries=0, token_ids=True)
    async with open_backend(tokens) as generate:
        with pytest.raises(PermanentError, match="images need the chat endpoint"):
            await generate(Request(messages=(message,), prompt_ids=(1, 2, 3)))
    assert fake_server.requests() == []  # refused before anything was sent
    agent = Agent(model_name_or_path="tiny", max_turns=1)

    async def never(request: Request) -> Any:
        raise AssertionError("a refused task reached the transport")

    trajectory = await run_agent(agent, never, {"messages": [msgspec.to_builtins(message)]}, tokenizer=tokenizer)
    assert trajectory.finish_reason == "error" and trajectory.error is not None
    assert "cannot carry them yet" in trajectory.error
