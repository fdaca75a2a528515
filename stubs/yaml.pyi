# Partial stubs for PyYAML (installed with verl and vLLM, without types): what the tests call.
from typing import Any

def dump(data: Any, stream: Any = None, **kwargs: Any) -> Any: ...
