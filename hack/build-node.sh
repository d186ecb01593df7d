#!/usr/bin/env bash
# Builds what a real node and its images need, from Go modules pinned in
# hack/versions.env and hack/{k8s,containerd,runc,cni,crane,buildkit,registry},
# into a cache outside the repository keyed by those versions, and prints that
# directory:
#
#   kubelet, kube-proxy              (hack/k8s, the control plane's module)
#   containerd, containerd-shim-runc-v2, ctr
#   runc (CGO, libseccomp), runc-static (for images)
#   cni/{bridge,host-local,loopback,portmap}
#   crane                            (builds and pushes images without a daemon)
#   buildkitd, buildctl
#   registry                         (Distribution v3)
#
# A warm cache builds nothing. Each binary's build time goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0

cache_root=${REDEPLOY_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redeploy-operator}
bin="$cache_root/node-kubernetes-$KUBERNETES_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_PLUGINS_VERSION-crane-$CRANE_VERSION-buildkit-$BUILDKIT_VERSION-distribution-$DISTRIBUTION_VERSION"
mkdir -p "$bin/cni"

log() { echo "build-node: $*" >&2; }

# Builds into a temporary name first so an interrupted build is never cached.
build() { # module-dir output-dir ldflags packages... (extra go flags in $goflags)
  local dir=$1 out=$2 ldflags=$3; shift 3
  local tmp start; tmp=$(mktemp -d "$bin/.build.XXXXXX"); start=$(date +%s)
  # shellcheck disable=SC2086 # goflags holds separate words
  (cd "$here/$dir" && go build -trimpath ${goflags:-} -ldflags "$ldflags" -o "$tmp/" "$@")
  log "built $(ls "$tmp" | tr '\n' ' ')in $(($(date +%s) - start))s"
  mv "$tmp"/* "$out/"
  rmdir "$tmp"
}

missing() { for b in "$@"; do [ -x "$bin/$b" ] || return 0; done; return 1; }

if missing containerd containerd-shim-runc-v2 ctr; then
  log "building containerd $CONTAINERD_VERSION"
  goflags="-tags=no_btrfs,no_devmapper,no_zfs,no_aufs" build containerd "$bin" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
fi

if missing runc runc-static; then
  log "building runc $RUNC_VERSION (needs libseccomp-dev)"
  runc_ldflags="-s -w -X main.version=${RUNC_VERSION#v}"
  CGO_ENABLED=1 goflags="-tags=seccomp" build runc "$bin" "$runc_ldflags" github.com/opencontainers/runc
  # Static, for images: it runs on whatever libc the image has, or none.
  static=$(mktemp -d "$bin/.static.XXXXXX")
  CGO_ENABLED=1 goflags="-tags=seccomp,netgo,osusergo" build runc "$static" "$runc_ldflags -extldflags -static" github.com/opencontainers/runc
  mv "$static/runc" "$bin/runc-static"
  rmdir "$static"
fi

if missing cni/bridge cni/host-local cni/loopback cni/portmap; then
  log "building CNI plugins $CNI_PLUGINS_VERSION"
  build cni "$bin/cni" "-s -w" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/meta/portmap
fi

if missing crane; then
  log "building crane $CRANE_VERSION"
  build crane "$bin" "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION" \
    github.com/google/go-containerregistry/cmd/crane
fi

if missing buildkitd buildctl; then
  log "building BuildKit $BUILDKIT_VERSION"
  build buildkit "$bin" "-s -w -X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
    github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
fi

if missing registry; then
  log "building the Distribution registry $DISTRIBUTION_VERSION"
  build registry "$bin" "-s -w -X github.com/distribution/distribution/v3/version.version=$DISTRIBUTION_VERSION" \
    github.com/distribution/distribution/v3/cmd/registry
fi

if missing kubelet kube-proxy; then
  log "building kubelet and kube-proxy $KUBERNETES_VERSION (shares most of its packages with the control plane build)"
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  pkg=k8s.io/component-base/version
  build k8s "$bin" "-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
fi

echo "$bin"
