"""verl's real rollout stack on one CPU machine: a local Ray, verl's own vLLM
server actor (``vLLMHttpServer``) hosting a vLLM CPU engine, verl's load
balancer, and verl's ``LLMServerClient`` in front of it.

verl's ``vLLMReplica`` asks Ray for GPUs, so the server actor is made
directly, with the settings that run on CPU. Everything listens on
127.0.0.1; Ray's files go under ``work_dir`` (or, when that path is too long
for Ray's Unix sockets, under a short directory in /tmp that is removed on
close). Needs the ``verl`` and ``vllm``
extras.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._shm import shm_entries, sweep_shm
from .environment import Device, cpu_environment

__all__ = ["VerlCluster", "trainer_config"]

# Ray's longest socket is <temp>/session_<date>_<pid>/sockets/plasma_store.<n>,
# and an AF_UNIX path stops at 107 bytes (103 on macOS): a checkout a few
# dozen characters deep is enough for ray.init to refuse to start.
_RAY_SOCKET_TAIL = len("/session_2026-12-01_23-50-02_123456_4194304/sockets/plasma_store.99")
_SOCKET_PATH_MAX = 103


def _ray_temp_dir(work_dir: Path) -> tuple[Path, bool]:
    """Where Ray keeps its session: ``work_dir/ray`` when its sockets fit
    there, else a fresh short directory under /tmp (``True``: the caller
    removes it). TMPDIR is no help, since it points into ``work_dir`` too."""
    preferred = work_dir.resolve() / "ray"
    if len(os.fsencode(preferred)) + _RAY_SOCKET_TAIL <= _SOCKET_PATH_MAX:
        preferred.mkdir(parents=True, exist_ok=True)
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="afm-ray-", dir="/tmp")), True


def _recording_balancer() -> type:
    """verl's default balancer, also keeping a log of (request id, server id)
    for every acquisition, so a test can see where each turn went."""
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    class RecordingLoadBalancer(GlobalRequestLoadBalancer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.routing: list[tuple[str, str]] = []

        def acquire_server(self, request_id: str) -> tuple[str, Any]:
            server_id, handle = super().acquire_server(request_id)
            self.routing.append((request_id, server_id))
            return server_id, handle

        def routing_log(self) -> list[tuple[str, str]]:
            return list(self.routing)

    return RecordingLoadBalancer


class VerlCluster:
    """``with VerlCluster(model, work_dir=...) as cluster:`` starts Ray and one
    verl vLLM server, and gives ``cluster.client`` (verl's
    ``LLMServerClient``). ``aliases`` registers the one server under that many
    ids with the balancer (so sticky routing is observable without a second
    engine on two cores). ``device="cpu"`` uses the CPU settings and asks
    Ray for no GPU; ``"cuda"`` gives the server actor one GPU and vLLM's own
    memory and graph settings; ``engine_kwargs`` are more of vLLM's engine
    arguments (verl's ``rollout.engine_kwargs.vllm``). On exit the agent-loop workers and the actor
    are killed, Ray is shut down, the engine's shared memory removed and the
    environment variables it set (loopback, temp dir, offline hub) restored.
    """

    def __init__(
        self,
        model: Path | str,
        *,
        work_dir: Path,
        aliases: int = 1,
        max_model_len: int = 1024,
        prompt_length: int = 512,
        response_length: int = 512,
        kv_cache_bytes: int = 128 << 20,
        device: Device = "cpu",
        engine_kwargs: Mapping[str, Any] | None = None,
        dtype: str = "bfloat16",
    ) -> None:
        self.model = str(model)
        self._engine_kwargs = dict(engine_kwargs or {})
        self.device = device
        self._work_dir = work_dir
        self._aliases = aliases
        self.max_model_len = max_model_len
        self.prompt_length = prompt_length
        self.response_length = response_length
        self._kv_cache_bytes = kv_cache_bytes
        self.server: Any = None
        self.balancer: Any = None
        self.client: Any = None
        self._managers: list[Any] = []
        self._reward_workers: list[Any] = []
        self._serving: dict[str, Any] = {}
        self._transfer_queue = False
        self.dtype = dtype
        self._shm_before: set[str] = set()
        self._ray_dir: Path | None = None
        self._env_before: dict[str, str | None] = {}

    def __enter__(self) -> VerlCluster:
        import ray

        # Ray and verl's server read these from the environment; they are
        # given back as they were when the cluster closes.
        changes = cpu_environment(self._work_dir, offline=Path(self.model).exists())
        self._env_before = {key: os.environ.get(key) for key in changes}
        os.environ.update(changes)
        self._shm_before = shm_entries()
        ray_dir, owned = _ray_temp_dir(self._work_dir)
        self._ray_dir = ray_dir if owned else None
        try:
            # Logical CPUs: verl and TransferQueue make actors that each ask
            # Ray for one CPU to be scheduled (agent-loop and reward workers,
            # storage units); they wait, not work, so they share the cores.
            ray.init(
                num_cpus=max(8, os.cpu_count() or 2), include_dashboard=False, _temp_dir=str(ray_dir), log_to_driver=False
            )
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        import ray
        from omegaconf import OmegaConf
        from verl.workers.config.model import HFModelConfig
        from verl.workers.config.rollout import RolloutConfig
        from verl.workers.rollout.llm_server import LLMServerClient
        from verl.workers.rollout.replica import RolloutMode
        from verl.workers.rollout.router import get_router_handle
        from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer

        cpu = {"kv_cache_memory_bytes": self._kv_cache_bytes} if self.device == "cpu" else {}
        config = RolloutConfig(
            name="vllm",
            nnodes=1,
            n_gpus_per_node=1,
            tensor_model_parallel_size=1,
            load_format="auto",  # real weights from the folder, not "dummy"
            enforce_eager=self.device == "cpu",
            enable_sleep_mode=False,  # not supported on CPU; a trainer turns it on
            max_model_len=self.max_model_len,
            prompt_length=self.prompt_length,
            response_length=self.response_length,
            max_num_seqs=64,
            max_num_batched_tokens=2048,
            dtype=self.dtype,
            engine_kwargs={"vllm": {**cpu, **self._engine_kwargs, **self._serving}},
        )
        gpus = {"num_gpus": 1} if self.device == "cuda" else {}
        actor = ray.remote(vLLMHttpServer).options(name="vllm_server_0_0", max_concurrency=1000, num_cpus=0, **gpus)
        self.server = actor.remote(
            config=config,
            model_config=HFModelConfig(path=self.model),
            rollout_mode=RolloutMode.STANDALONE,
            workers=[],
            replica_rank=0,
            node_rank=0,
            gpus_per_node=1,
            nnodes=1,
            # Ray sets CUDA_VISIBLE_DEVICES in an actor that holds a GPU.
            cuda_visible_devices="" if self.device == "cpu" else "0",
        )
        ray.get(self.server.launch_server.remote())
        host, port = ray.get(self.server.get_server_address.remote())
        servers = {f"{host}:{port}#{k}": self.server for k in range(self._aliases)}
        self.balancer = get_router_handle(servers=servers, load_balancer_cls=_recording_balancer())
        self.client = self.make_client(LLMServerClient)

    def make_client(self, client_class: type, **config: Any) -> Any:
        """One of verl's clients (``LLMServerClient``, or the
        ``FullyAsyncLLMServerClient`` its async trainers use) over this
        cluster's balancer; ``config`` goes into its trainer config (e.g.
        ``async_training={"partial_rollout": False}``)."""
        from omegaconf import OmegaConf

        rollout = {"name": "vllm", "full_determinism": False, "response_length": self.response_length}
        trainer = OmegaConf.create({"actor_rollout_ref": {"rollout": rollout}, **config})
        return client_class(config=trainer, load_balancer_handle=self.balancer)

    def serve(self, model: Path | str, *, engine_kwargs: Mapping[str, Any] | None = None) -> None:
        """Serve another model: the server actor, the balancer and the client
        are made anew on the same Ray (one engine at a time), with
        ``engine_kwargs`` over the cluster's own (``tokenizer_mode`` for a
        Mistral model, say). Agent-loop managers made before hold the old
        client: make new ones."""
        import ray

        self._kill_managers()
        if self.server is not None:
            ray.kill(self.server)
            self.server = None
        if self.balancer is not None:
            ray.kill(self.balancer)
        self.balancer = self.client = None
        self.model = str(model)
        self._serving = dict(engine_kwargs or {})
        self._start()

    def routing_log(self) -> list[tuple[str, str]]:
        """Every (request id, server id) the balancer handed out so far."""
        import ray

        log: list[tuple[str, str]] = [(str(a), str(b)) for a, b in ray.get(self.balancer.routing_log.remote())]
        return log

    def inflight(self) -> int:
        """Requests the balancer counts as in flight."""
        import ray

        count: int = ray.get(self.balancer.get_total_inflight.remote())
        return count

    def call(self, method: str, *args: Any) -> Any:
        """Call a method of verl's server actor and wait (e.g.
        ``abort_all_requests``, ``resume_generation``, ``set_global_steps``)."""
        import ray

        return ray.get(getattr(self.server, method).remote(*args))

    def trainer_config(
        self,
        *,
        agent_loop_config_path: Path | None = None,
        prompt_length: int = 512,
        response_length: int = 256,
        calculate_log_probs: bool = True,
        num_workers: int = 1,
        overrides: tuple[str, ...] = (),
    ) -> Any:
        """:func:`trainer_config` for this cluster's model and context."""
        return trainer_config(
            self.model,
            max_model_len=self.max_model_len,
            agent_loop_config_path=agent_loop_config_path,
            prompt_length=prompt_length,
            response_length=response_length,
            calculate_log_probs=calculate_log_probs,
            num_workers=num_workers,
            overrides=overrides,
        )

    def reward_workers(self, config: Any) -> list[Any]:
        """verl's reward-loop workers, made as its trainers make them
        (``RewardLoopManager``); the trainers hand them to the agent-loop
        manager when there is no reward model. Made once; killed on close."""
        if not self._reward_workers:
            from verl.experimental.reward_loop import RewardLoopManager

            self._reward_workers = list(RewardLoopManager(config=config).reward_loop_workers)
        return self._reward_workers

    def agent_loop_manager(self, config: Any, *, v1: bool = False, reward_workers: bool = True, client: Any = None) -> Any:
        """verl's agent-loop manager over this cluster's client (or
        ``client``), as its trainers make it: ``AgentLoopManagerTQ`` (the v1
        trainer, ``main_ppo``'s default; TransferQueue is started for it)
        or the legacy ``AgentLoopManager``, with the reward-loop workers
        unless ``reward_workers`` is off. Its worker actors are separate Ray
        processes, killed when the cluster closes."""
        handles = self.reward_workers(config) if reward_workers else None
        if v1:
            from verl.trainer.ppo.v1 import AgentLoopManagerTQ

            self.start_transfer_queue(config)
            manager: Any = AgentLoopManagerTQ.create(
                config=config, llm_client=client or self.client, reward_loop_worker_handles=handles
            )
        else:
            from verl.experimental.agent_loop.agent_loop import AgentLoopManager

            manager = AgentLoopManager.create(config=config, llm_client=client or self.client, reward_loop_worker_handles=handles)
        self._managers.append(manager)
        return manager

    def start_transfer_queue(self, config: Any) -> None:
        """TransferQueue's controller and storage in this Ray, as verl's v1
        ``TaskRunner`` starts them (``tq.init(config.transfer_queue)``); once,
        closed with the cluster."""
        if not self._transfer_queue:
            import transfer_queue as tq

            tq.init(config.transfer_queue)
            self._transfer_queue = True

    def drop_managers(self) -> None:
        """Kill the worker actors of the agent-loop managers made so far."""
        self._kill_managers()

    def _kill_managers(self) -> None:
        import ray

        for manager in self._managers:
            for worker in manager.agent_loop_workers:
                ray.kill(worker)
        self._managers.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            self._kill_managers()
            for worker in self._reward_workers:
                ray.kill(worker)
        self._reward_workers = []
        if self._transfer_queue:
            import transfer_queue as tq

            tq.close()
            self._transfer_queue = False
        if self.server is not None:
            ray.kill(self.server)
            self.server = None
        self.balancer = self.client = None
        ray.shutdown()
        sweep_shm(self._shm_before)
        if self._ray_dir is not None:
            # Ray's own logs and spilled objects, nothing of ours: a file a
            # dying worker still holds open must not turn close into an error.
            shutil.rmtree(self._ray_dir, ignore_errors=True)
            self._ray_dir = None
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_before = {}


def trainer_config(
    model: Path | str,
    *,
    max_model_len: int | None = None,
    agent_loop_config_path: Path | None = None,
    prompt_length: int = 512,
    response_length: int = 256,
    calculate_log_probs: bool = True,
    num_workers: int = 1,
    overrides: tuple[str, ...] = (),
) -> Any:
    """verl's full trainer config (``ppo_trainer``, what ``python -m
    verl.trainer.main_ppo`` reads), composed with Hydra as that entry point
    composes it, for ``model`` and an async agent-loop rollout; one
    reward-loop worker and one TransferQueue storage unit (two cores);
    ``overrides`` in Hydra's syntax, as on verl's command line."""
    import hydra
    import verl

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    context = [f"actor_rollout_ref.rollout.max_model_len={max_model_len}"] if max_model_len is not None else []
    with hydra.initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra.compose(
            "ppo_trainer",
            overrides=[
                f"actor_rollout_ref.model.path={model}",
                "actor_rollout_ref.rollout.name=vllm",
                "actor_rollout_ref.rollout.mode=async",
                f"actor_rollout_ref.rollout.prompt_length={prompt_length}",
                f"actor_rollout_ref.rollout.response_length={response_length}",
                f"actor_rollout_ref.rollout.calculate_log_probs={calculate_log_probs}",
                f"actor_rollout_ref.rollout.agent.num_workers={num_workers}",
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_config_path or 'null'}",
                f"data.max_prompt_length={prompt_length}",
                f"data.max_response_length={response_length}",
                *context,
                "reward.num_workers=1",
                "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
                *overrides,
            ],
        )
