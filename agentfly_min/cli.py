"""The ``agentfly-min`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence

import anyio

from .configs import ClientConfig
from .errors import TransportError
from .records import Completion, Message, Request
from .transports import open_backend

__all__ = ["main"]


async def _demo(base_url: str, requests: int, concurrency: int) -> tuple[Counter[str], list[int]]:
    config = ClientConfig(base_url=base_url, max_concurrency=concurrency, max_requests_per_minute=60_000, timeout=30)
    outcomes: Counter[str] = Counter()
    attempts: list[int] = []
    async with open_backend(config) as generate:

        async def one(i: int) -> None:
            try:
                completion: Completion = await generate(Request(messages=(Message(role="user", content=f"task {i}"),)))
            except TransportError as exc:
                outcomes[f"{type(exc).__name__}: {exc}"] += 1
                return
            outcomes["completed"] += 1
            attempts.append(completion.attempts)

        async with anyio.create_task_group() as tg:
            for i in range(requests):
                tg.start_soon(one, i)
    return outcomes, attempts


def demo(args: argparse.Namespace) -> int:
    """The client transport and its default middleware against the local
    fake OpenAI server, with faults injected."""
    from .testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        server.configure(fault_rate=args.fault_rate, fault_kinds=["429", "500", "503", "drop"], latency=0.01)
        start = time.perf_counter()
        outcomes, attempts = anyio.run(_demo, server.base_url, args.requests, args.concurrency, backend=args.backend_lib)
        seconds = time.perf_counter() - start
        served = Counter(entry.outcome for entry in server.log())
    print(f"{args.requests} requests, {args.concurrency} in flight, {args.fault_rate:.0%} faults injected, on {args.backend_lib}")
    print(f"  server saw: {dict(served)}")
    print(f"  outcomes:   {dict(outcomes)}")
    if attempts:
        print(f"  attempts:   mean {sum(attempts) / len(attempts):.2f}, max {max(attempts)}")
    print(f"  time:       {seconds:.2f} s ({args.requests / seconds:,.0f} requests/s)")
    return 0 if outcomes["completed"] == args.requests else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentfly-min", description="Typed LLM agents over vLLM, verl and OpenAI-compatible transports.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help=demo.__doc__.splitlines()[0] if demo.__doc__ else None)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    p.set_defaults(run=demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
