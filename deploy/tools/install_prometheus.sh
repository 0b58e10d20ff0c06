#!/usr/bin/env bash
# Installs Debian's Prometheus and promtool (the observability tests' real parts) when they are
# missing. Never fails the build: where the package cannot be installed (no apt-get, not root, no
# package mirror), it says why, and those tests skip with the same reason.
set -uo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "[prometheus] not installed: no apt-get here; the Prometheus tests will skip"; exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "[prometheus] not installed: apt-get needs root; the Prometheus tests will skip"; exit 0
  fi
fi
echo "[prometheus] installing Debian's prometheus package (Prometheus + promtool)"
export DEBIAN_FRONTEND=noninteractive
if ! { $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
       { $sudo apt-get update -qq >/dev/null 2>&1 &&
         $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; }; }; then
  echo "[prometheus] not installed: apt-get install prometheus failed; the Prometheus tests will skip"; exit 0
fi
prometheus --version 2>&1 | head -1
