#!/bin/sh
# The pip options `make setup` installs torch with (printed on one line, maybe empty).
#
#   sh scripts/torch_index_args.sh TORCH_INDEX_URL TORCH_CPU_INDEX_URL PYTHON
#
# TORCH_INDEX_URL (a Makefile variable, default `auto`):
#   auto   on Linux, PyPI's torch wheel is the CUDA build (~GBs of nvidia-* packages), so
#          PyTorch's CPU wheel index (TORCH_CPU_INDEX_URL) is added with --extra-index-url:
#          pip takes the higher version, and 2.13.0+cpu sorts above 2.13.0; the other packages
#          still come from PyPI. Nothing is added, and pip's own configuration decides, when
#            - pip already has a package source configured (index-url, extra-index-url,
#              find-links or no-index in a pip.conf or PIP_* variable: a local mirror or a
#              wheel directory, which may be all this machine can reach), or
#            - an NVIDIA GPU is there (nvidia-smi on the PATH): PyPI's CUDA build is wanted, or
#            - the system is not Linux (PyPI's macOS and Windows wheels are CPU builds).
#   URL    torch from that index alone (--index-url URL), e.g. a CUDA index
#          (https://download.pytorch.org/whl/cu126) or a mirror of the CPU one.
#   empty  pip's own configuration, whatever it is.
set -eu
choice=${1-auto}
cpu_index=${2:-https://download.pytorch.org/whl/cpu}
python=${3:-python3}

case "$choice" in
  "") exit 0 ;;
  auto) ;;
  *) echo "--index-url $choice"; exit 0 ;;
esac

[ "$(uname -s)" = Linux ] || exit 0
command -v nvidia-smi >/dev/null 2>&1 && exit 0
# `pip config list` shows the config files' settings and the PIP_* variables (":env:.index-url").
if "$python" -m pip config list 2>/dev/null | grep -Eq '\.(index-url|extra-index-url|find-links|no-index)='; then
  exit 0
fi
echo "--extra-index-url $cpu_index"
