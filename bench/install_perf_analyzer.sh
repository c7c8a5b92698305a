#!/usr/bin/env bash
# Installs the real perf_analyzer (Triton's load generator) into .trilate/perf_analyzer/, idempotently.
#
# tritonclient[all] brings only a placeholder perf-analyzer; the real binary is in the perf-analyzer 2.60.0
# wheel, built for glibc 2.38.  On an older glibc (Debian 12 has 2.36) it runs through Debian 13's loader and
# libraries, fetched with `apt-get download` from the Debian mirror this machine already uses and unpacked
# with `dpkg -x` into a private folder: nothing is installed system-wide.
#
#   bench/install_perf_analyzer.sh [PYTHON]      -> prints the command prefix that runs perf_analyzer
#
# Writes .trilate/perf_analyzer/run (a wrapper script); `make perf-analyzer` calls this.
set -euo pipefail
PYTHON=${1:-.venv/bin/python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=$ROOT/.trilate/perf_analyzer
VERSION=2.60.0
WRAPPER=$DEST/run
mkdir -p "$DEST"

if [ -x "$WRAPPER" ] && "$WRAPPER" --version >/dev/null 2>&1; then
  echo "$WRAPPER"
  exit 0
fi

if [ -z "$(find "$DEST/wheel" -type f -name perf_analyzer -size +1M 2>/dev/null | head -n 1)" ]; then
  rm -rf "$DEST/download" && mkdir -p "$DEST/download"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
    --python-version 3.11 --dest "$DEST/download" "perf-analyzer==$VERSION" >&2
  rm -rf "$DEST/wheel" && mkdir -p "$DEST/wheel"
  "$PYTHON" -m zipfile -e "$DEST"/download/perf_analyzer-*.whl "$DEST/wheel"
fi
BINARY=$(find "$DEST/wheel" -type f -name perf_analyzer -size +1M | head -n 1)
if [ -z "$BINARY" ]; then
  echo "install_perf_analyzer: no perf_analyzer binary in the perf-analyzer $VERSION wheel" >&2
  exit 1
fi
chmod +x "$BINARY"

glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n' 2.38 "$glibc" | sort -V | head -n 1)" = 2.38 ]; then
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$BINARY" > "$WRAPPER"
else
  LIBS=$DEST/trixie
  if [ ! -e "$LIBS/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]; then
    mirror=${TRILATE_DEBIAN_MIRROR:-$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ')}
    if [ -z "$mirror" ]; then
      echo "install_perf_analyzer: no Debian mirror in /etc/apt; set TRILATE_DEBIAN_MIRROR" >&2
      exit 1
    fi
    APT=$DEST/apt
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$LIBS"
    echo "deb [trusted=yes] $mirror trixie main" > "$APT/sources.list"
    opts=(-oDir::Etc::SourceList="$APT/sources.list" -oDir::Etc::SourceParts=/dev/null
          -oDir::State::Lists="$APT/lists" -oDir::Cache="$APT/cache" -oAPT::Get::List-Cleanup=0
          -oDebug::NoLocking=1)
    apt-get "${opts[@]}" update -qq >&2
    (cd "$APT/cache/archives" && apt-get "${opts[@]}" download libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g >&2)
    for deb in "$APT"/cache/archives/*.deb; do dpkg -x "$deb" "$LIBS"; done
  fi
  LIBDIR=$LIBS/usr/lib/x86_64-linux-gnu
  printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' "$LIBDIR/ld-linux-x86-64.so.2" "$LIBDIR" "$BINARY" > "$WRAPPER"
fi
chmod +x "$WRAPPER"
"$WRAPPER" --version >/dev/null 2>&1 || { echo "install_perf_analyzer: $WRAPPER does not run" >&2; exit 1; }
echo "$WRAPPER"
