"""Must NOT type-check: config fields of the wrong type."""

from agentfly_min import AsyncVLLMConfig, ClientConfig

ClientConfig(timeout="300")  # expect: Argument "timeout" to "ClientConfig" has incompatible type "str"
AsyncVLLMConfig(tensor_parallel_size=1.5)  # expect: Argument "tensor_parallel_size" to "AsyncVLLMConfig" has incompatible type "float"
ClientConfig(max_request_per_minute=200)  # expect: Unexpected keyword argument "max_request_per_minute"
