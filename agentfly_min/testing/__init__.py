"""Helpers for testing agents and transports, here and in users' own tests."""

from .fake_openai import FakeOpenAIServer, ServerSettings

__all__ = ["FakeOpenAIServer", "ServerSettings"]
