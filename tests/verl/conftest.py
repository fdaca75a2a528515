"""verl's real rollout stack, shared by every test of this package: one Ray,
one verl vLLM server actor at a time (the tiny Qwen2.5 model, confident and
in float32 so logprobs can be compared with a transformers forward pass),
verl's load balancer and clients, its reward-loop workers, its agent-loop
managers on both trainer paths and TransferQueue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfly_min.local._shm import shm_entries
from agentfly_min.local.verl_cluster import VerlCluster
from agentfly_min.testing import tiny_model

from ..conftest import CACHE, WORK
from ..vllm_support import COMPACT_JSON, assert_gone, engine_children

PROMPT_LENGTH, RESPONSE_LENGTH = 512, 128


@pytest.fixture(scope="package")
def default_model() -> Path:
    return tiny_model(CACHE, peaked=True)


@pytest.fixture(scope="package")
def stack(default_model: Path) -> Iterator[VerlCluster]:
    before = {p.pid for p in engine_children()}
    shm_before = shm_entries()
    compact = {"structured_outputs_config": COMPACT_JSON}
    with VerlCluster(default_model, work_dir=WORK, aliases=2, engine_kwargs=compact, dtype="float32") as running:
        started = [p for p in engine_children() if p.pid not in before]
        assert started, "Ray and the server run as child processes"
        assert shm_entries() - shm_before, "the engine's queues live in /dev/shm (else this check is void)"
        yield running
    assert_gone(started, timeout=60)  # Ray, the server actor, its engine, the loop and reward workers
    assert shm_entries() - shm_before == set()  # no shared memory left behind


@pytest.fixture
def cluster(stack: VerlCluster, default_model: Path) -> VerlCluster:
    """The stack serving the default model (a family test may have swapped it)."""
    if stack.model != str(default_model):
        stack.serve(default_model)
    return stack


_TOKENIZERS: dict[str, Any] = {}


def tokenizer_of(cluster: VerlCluster) -> Any:
    if cluster.model not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[cluster.model] = AutoTokenizer.from_pretrained(cluster.model)
    return _TOKENIZERS[cluster.model]


Row = tuple[str, str, Any]
"""(agent_name, question, answer) of one dataset row."""


def row_fields(rows: list[Row], *, explode: tuple[int, ...] = (), uids: list[str] | None = None) -> dict[str, list[Any]]:
    """The fields verl's RLHFDataset gives each row (its collate's
    non-tensor keys); rows in ``explode`` carry an ``extra_info`` flag that
    makes the test rewards raise."""
    return {
        "raw_prompt": [[{"role": "user", "content": question}] for _, question, _ in rows],
        "agent_name": [name for name, _, _ in rows],
        "index": list(range(len(rows))),
        "data_source": ["openai/gsm8k"] * len(rows),
        "reward_model": [{"style": "rule", "ground_truth": str(answer)} for _, _, answer in rows],
        "extra_info": [{"index": i, "split": "train", "explode": i in explode} for i in range(len(rows))],
        "tools_kwargs": [{} for _ in rows],
        "interaction_kwargs": [{} for _ in rows],
        "uid": uids if uids is not None else [f"uid-{i}" for i in range(len(rows))],
    }


def column(values: list[Any]) -> Any:
    """A one-dimensional numpy object array of ``values`` (lists stay items)."""
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def legacy_batch(rows: list[Row], *, explode: tuple[int, ...] = (), uids: list[str] | None = None) -> Any:
    """A batch as the legacy trainer hands it to AgentLoopManager."""
    from verl.protocol import DataProto

    fields = row_fields(rows, explode=explode, uids=uids)
    return DataProto.from_dict(
        non_tensors={key: column(values) for key, values in fields.items()},
        meta_info={"global_steps": 1, "validate": False},
    )


def v1_batch(rows: list[Row], *, uids: list[str], explode: tuple[int, ...] = (), global_steps: int = 1) -> Any:
    """A batch as verl's v1 trainer submits it (``_next_train_batch``: the
    dataloader's dict through ``tu.get_tensordict``, ``global_steps``
    assigned), registered in TransferQueue as ``_submit_batch_to_rollout``
    registers it in sync mode."""
    import transfer_queue as tq
    from verl.utils import tensordict_utils as tu

    fields = row_fields(rows, explode=explode, uids=uids)
    # As verl's collate_fn gives them: one-dimensional numpy object arrays.
    columns: dict[str, Any] = {key: column(values) for key, values in fields.items()}
    batch = tu.get_tensordict(columns)
    tu.assign_non_tensor_data(batch, "global_steps", global_steps)
    tags = [{"is_prompt": True, "status": "pending", "global_steps": global_steps} for _ in uids]
    tq.kv_batch_put(keys=list(uids), partition_id="train", tags=tags)
    return batch


def wait_for_groups(uids: list[str], timeout: float = 300.0) -> dict[str, str]:
    """Wait until every prompt group reached a terminal status in
    TransferQueue; their statuses (``finished`` or ``failure``)."""
    import transfer_queue as tq

    deadline = time.monotonic() + timeout
    while True:
        tags = tq.kv_list().get("train", {})
        status = {uid: tags.get(uid, {}).get("status") for uid in uids}
        if all(value in ("finished", "failure") for value in status.values()):
            return {uid: str(value) for uid, value in status.items()}
        if time.monotonic() > deadline:
            raise TimeoutError(f"prompt groups not done after {timeout:.0f} s: {status}")
        time.sleep(0.5)


def group_keys(uids: list[str]) -> list[str]:
    """The trajectory keys TransferQueue holds for these prompt groups."""
    import transfer_queue as tq

    tags = tq.kv_list().get("train", {})
    return sorted(key for key in tags if key.rsplit("_", 2)[0] in uids and key not in uids)
