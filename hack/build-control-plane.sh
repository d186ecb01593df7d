#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# and kwok from their Go modules (pinned in hack/{k8s,etcd,kwok}) into a cache
# outside the repository, keyed by version, and prints that directory. Helm
# (hack/helm), for the chart's tests, goes there too, under its own version.
# A warm cache builds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0

cache_root=${REDEPLOY_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redeploy-operator}
bin="$cache_root/control-plane-kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
mkdir -p "$bin"

log() { echo "build-control-plane: $*" >&2; }

# Builds into a temporary name first so an interrupted build is never cached.
build() { # module-dir output-dir ldflags packages...
  local dir=$1 out=$2 ldflags=$3; shift 3
  local tmp; tmp=$(mktemp -d "$bin/.build.XXXXXX")
  (cd "$here/$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@")
  mv "$tmp"/* "$out/"
  rmdir "$tmp"
}

missing() { for b in "$@"; do [ -x "$bin/$b" ] || return 0; done; return 1; }

if missing etcd; then
  log "building etcd $ETCD_VERSION"
  build etcd "$bin" "-s -w" .
fi

if missing kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "building Kubernetes $KUBERNETES_VERSION (cold: 10-25 minutes)"
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  build k8s "$bin" "$ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl
fi

if missing kwok; then
  log "building kwok $KWOK_VERSION"
  build kwok "$bin" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
fi

if [ "$(cat "$bin/helm.version" 2>/dev/null)" != "$HELM_VERSION" ]; then
  log "building helm $HELM_VERSION"
  build helm "$bin" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm
  echo "$HELM_VERSION" > "$bin/helm.version"
fi

echo "$bin"
