"""Must NOT type-check: middleware of the wrong shape."""

from agentfly_min import Completion, Generate, Request, compose


def sync_layer(inner: Generate) -> Generate:
    def generate(request: Request) -> Completion:
        raise NotImplementedError

    return generate  # expect: Incompatible return value type


def takes_requests(request: Request) -> Generate:
    raise NotImplementedError


compose(takes_requests)  # expect: "compose"
