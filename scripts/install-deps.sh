#!/usr/bin/env bash
# Installs the build and test dependencies of quant from Debian packages.
# Run as root (CI does) or with sudo available.
#   (no option)  build + tests: the libraries, GTest, Google Benchmark, and slurm-wlm + munge for
#                the Slurm test (tests/cluster/ starts a single-node cluster of its own; no daemon
#                is enabled or started here)
#   --build      only what building the quant tool needs (`make run`)
#   --fuzz       the test set plus clang and its runtimes for the sanitizer/libFuzzer build
#                (docs/fuzzing.md)
set -euo pipefail
pkgs=(cmake g++ make pkg-config libeigen3-dev libcli11-dev libspdlog-dev libfmt-dev
      nlohmann-json3-dev libsentencepiece-dev libpcre2-dev)
case "${1:-}" in
  --build) ;;
  --fuzz) pkgs+=(libgtest-dev libbenchmark-dev slurm-wlm munge clang libclang-rt-14-dev libomp-dev) ;;
  "") pkgs+=(libgtest-dev libbenchmark-dev slurm-wlm munge) ;;
  *) echo "install-deps: unknown option $1 (--build, --fuzz)" >&2; exit 2 ;;
esac
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
