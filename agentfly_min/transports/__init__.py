"""Transports: async context managers that yield a ``Generate``.

One module per transport; :func:`open_backend` picks one from the type of
the config it is given.
"""

from .backend import open_backend
from .client import client_middleware, open_client, raw_client_generate

__all__ = ["open_backend", "open_client", "client_middleware", "raw_client_generate"]
