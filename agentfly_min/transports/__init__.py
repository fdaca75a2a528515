"""Transports: async context managers that yield a ``Generate``.

One module per transport (``client``, ``vllm``, ``verl``); :func:`open_backend`
picks one from the type of the config it is given. vLLM and verl are
imported only when their transport is used.
"""

from .backend import open_backend
from .client import client_middleware, open_client, raw_client_generate
from .verl import VerlServer, VerlTokenizer, open_verl, verl_generate
from .vllm import VLLMEngine, open_vllm, open_vllm_engine, vllm_generate

__all__ = [
    "open_backend",
    "open_client",
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
