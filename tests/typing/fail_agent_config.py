"""An agent's config type follows it: the vLLM agent's config needs a model."""

from agentfly_min import Agent, AsyncVLLMConfig, ClientConfig, open_backend

vllm_agent = Agent(model_name_or_path="m", backend="async_vllm", backend_config=AsyncVLLMConfig())
open_backend(vllm_agent.config)  # expect: No overload variant of "open_backend" matches
client: ClientConfig = vllm_agent.config  # expect: Incompatible types in assignment
