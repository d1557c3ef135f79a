#!/usr/bin/env bash
# Installs the build and test dependencies of quant from Debian packages.
# Run as root (CI does) or with sudo available. slurm-wlm and munge are for the Slurm test
# (tests/cluster/: a single-node cluster it starts itself; no daemon is enabled or started here). `--fuzz` adds clang and its runtimes for the
# sanitizer/libFuzzer build (docs/fuzzing.md).
set -euo pipefail
pkgs=(cmake g++ make pkg-config libeigen3-dev libcli11-dev libspdlog-dev libfmt-dev
      nlohmann-json3-dev libgtest-dev libsentencepiece-dev libpcre2-dev libbenchmark-dev slurm-wlm munge)
[ "${1:-}" = "--fuzz" ] && pkgs+=(clang libclang-rt-14-dev libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
