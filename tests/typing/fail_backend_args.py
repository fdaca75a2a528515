"""Must NOT type-check: a transport opened without what it needs."""

from agentfly_min import AsyncVerlConfig, AsyncVLLMConfig, open_backend

open_backend(AsyncVLLMConfig())  # expect: No overload variant of "open_backend" matches argument type "AsyncVLLMConfig"
open_backend(AsyncVerlConfig(), model="m")  # expect: No overload variant of "open_backend" matches argument types "AsyncVerlConfig", "str"
