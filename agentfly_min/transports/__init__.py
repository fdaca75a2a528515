"""Transports: async context managers that yield a ``Generate``.

One module per transport (``client``, ``vllm``, ``verl``); :func:`open_backend`
picks one from the type of the config it is given. vLLM and verl are
imported only when their transport is used.
"""

from .backend import open_backend, open_stream
from .client import client_middleware, client_stream_middleware, open_client, open_client_stream, raw_client_generate, raw_client_stream
from .verl import VerlServer, VerlTokenizer, open_verl, verl_generate
from .vllm import VLLMEngine, open_vllm, open_vllm_engine, open_vllm_stream, vllm_generate, vllm_stream

__all__ = [
    "open_backend",
    "open_stream",
    "open_client",
    "open_client_stream",
    "client_stream_middleware",
    "raw_client_stream",
    "open_vllm_stream",
    "vllm_stream",
    "client_middleware",
    "raw_client_generate",
    "open_vllm",
    "open_vllm_engine",
    "vllm_generate",
    "VLLMEngine",
    "open_verl",
    "verl_generate",
    "VerlServer",
    "VerlTokenizer",
]
