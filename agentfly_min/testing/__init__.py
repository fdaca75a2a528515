"""Helpers for testing agents and transports, here and in users' own tests."""

from .fake_openai import FakeOpenAIServer, ServerSettings
from .tiny_model import default_cache_dir, tiny_model

__all__ = ["FakeOpenAIServer", "ServerSettings", "tiny_model", "default_cache_dir"]
