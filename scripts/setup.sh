#!/usr/bin/env bash
# Installs every build and test dependency of mxlm from Debian packages.
# Idempotent: packages already present are skipped. Needs root or sudo.
set -euo pipefail
pkgs=(g++ cmake make pkg-config ninja-build
      libdnnl-dev ocl-icd-opencl-dev libxsimd-dev
      libsentencepiece-dev sentencepiece libcli11-dev
      googletest libgtest-dev libbenchmark-dev nlohmann-json3-dev libeigen3-dev
      libopenblas-pthread-dev
      libedit-dev tmux
      g++-aarch64-linux-gnu qemu-user
      clang libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
