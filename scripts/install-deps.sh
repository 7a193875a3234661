#!/usr/bin/env bash
# Installs the Debian 12 packages baton needs to build, test and run, only
# those missing. Run as root (CI is root); as another user it says what is
# missing and uses sudo when there is one.
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config
      libuv1-dev libhdf5-dev hdf5-tools libcriterion-dev
      libopenblas-dev libxxhash-dev zlib1g-dev python3-h5py python3-numpy
      clang libclang-rt-14-dev iproute2)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then sudo=sudo; else
    echo "install-deps: not root and no sudo; install: ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
