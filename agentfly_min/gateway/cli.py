"""``agentfly-min gateway``: serve a model through the gateway for manual use;
Ctrl-C writes every session's trajectories and stops."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec

__all__ = ["add_command"]


def add_command(commands: Any, prepare: Any, device: Any) -> None:
    """Register the command on the CLI's subparsers (``prepare`` sets up the
    environment for local engines, ``device`` reads ``--device``)."""
    g = commands.add_parser("gateway", help="serve a model behind an OpenAI-compatible gateway that records token-exact trajectories")
    g.add_argument("--model", help="a model folder (default: the tiny random model, built offline)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000, help="0: a free port")
    g.add_argument("--template", help="the chat template's name (default: the one the tokenizer carries)")
    g.add_argument("--max-model-len", type=int, default=4096)
    g.add_argument("--out", default="gateway-trajectories.jsonl", help="trajectories JSONL, appended to on exit")
    g.add_argument("--backend-lib", choices=["asyncio", "trio"], default="asyncio")
    g.add_argument("--work-dir", default=".cache/gateway", help="models, caches and temp files")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="settings of the local engine")
    g.set_defaults(run=lambda args: _serve(args, prepare, device))


def _serve(args: argparse.Namespace, prepare: Any, device: Any) -> int:
    from ..errors import ConfigError
    from ..local import local_engine_config
    from ..testing import tiny_model
    from ..transports.vllm import open_vllm_engine, vllm_generate
    from .config import GatewayConfig
    from .server import open_gateway

    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    model = args.model or str(tiny_model(work_dir / "models"))
    prepare(work_dir, offline=Path(model).exists())
    try:
        config = GatewayConfig(host=args.host, port=args.port, template=args.template, max_model_len=args.max_model_len, create_sessions=True)
        engine_config = local_engine_config(device(args.device), args.max_model_len)
    except ConfigError as exc:
        print(f"agentfly-min gateway: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)

    async def main() -> int:
        async with open_vllm_engine(engine_config, model) as engine:
            async with open_gateway(vllm_generate(engine), engine.tokenizer, config) as gateway:
                print(f"gateway for {model} at {gateway.url}", flush=True)
                print(f"  an agent's OpenAI base URL: {gateway.url}/sessions/<episode>/v1 (a new name starts a session)", flush=True)
                print("  Ctrl-C writes the trajectories and stops", flush=True)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                trajectories = await gateway.end_all()
        with out.open("ab") as file:
            for trajectory in trajectories:
                file.write(msgspec.json.encode(trajectory) + b"\n")
        print(f"{len(trajectories)} trajectories written to {out}", flush=True)
        return 0

    status: int = anyio.run(main, backend=args.backend_lib)
    return status
