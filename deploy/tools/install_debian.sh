#!/usr/bin/env bash
# Installs a Debian package that the project's checks use as a real part, when its commands are
# missing:  install_debian.sh PACKAGE COMMAND...
#   "prometheus prometheus promtool": the observability tests (they skip, with this reason, without it)
#   "shellcheck shellcheck": make lint (fails without it)
# Never fails itself: where the package cannot be installed (no apt-get, not root, no package
# mirror), it says why and exits 0; the callers decide what a missing command means.
set -uo pipefail
package=${1:?package}; shift
missing=0
for command in "$@"; do command -v "$command" >/dev/null || missing=1; done
[ "$missing" = 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "[$package] not installed: no apt-get here"; exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
    echo "[$package] not installed: apt-get needs root"; exit 0
  fi
fi
echo "[$package] installing Debian's $package package"
export DEBIAN_FRONTEND=noninteractive
if ! { $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 ||
       { $sudo apt-get update -qq >/dev/null 2>&1 &&
         $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1; }; }; then
  echo "[$package] not installed: apt-get install $package failed"; exit 0
fi
