#!/usr/bin/env bash
# Builds the operator's image without a container daemon and prints the path
# of its tarball (target/image/redeploy-operator.tar, `crane push` loads it).
# With IMAGE=<registry>/<repository>:<tag> it also pushes it there (plain HTTP
# allowed: the test registries here have no TLS).
#
# The Dockerfile is the users' route (a Rust builder stage, then
# distroless/cc-debian12 as user 65532). No base image can be pulled here, so
# this builds the same layout from this machine instead: the binary built on
# the host (`cargo build --release`, Debian 12's glibc, as distroless
# cc-debian12 has) and stripped, at /usr/local/bin/redeploy-operator; the
# glibc, libm, libgcc_s and loader it links; CA certificates; /etc/passwd
# with nonroot (65532); user 65532:65532, entrypoint the binary, cmd `run`.
#
# Usage: build-operator-image.sh NODE_BIN (the directory hack/build-node.sh
# prints: crane, and the registry crane assembles the image in).
# A warm run (same binary, same script) only pushes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${1:?usage: build-operator-image.sh NODE_BIN}
out="$root/target/image"
mkdir -p "$out"

log() { echo "build-operator-image: $*" >&2; }

# PROFILE=dev builds a quick, larger image for trying changes out.
profile=${PROFILE:-release}
(cd "$root" && ${CARGO:-cargo} build --profile "$profile" --locked --bin redeploy-operator >&2)
binary="$root/target/$([ "$profile" = dev ] && echo debug || echo "$profile")/redeploy-operator"
version=$("$binary" --version | awk '{ print $2 }')
commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)

key=$({ cat "$0"; cat "$binary"; } | sha256sum | cut -c1-16)
tarball="$out/redeploy-operator.tar"
if [ "$(cat "$out/key" 2>/dev/null)" != "$key" ] || [ ! -f "$tarball" ]; then
  start=$(date +%s)
  tmp=$(mktemp -d "$out/.build.XXXXXX")
  registry_pid=""
  trap '[ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null; rm -rf "$tmp"' EXIT

  # The root filesystem.
  fs="$tmp/rootfs"
  mkdir -p "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/tmp" "$tmp/home/home/nonroot"
  chmod 1777 "$fs/tmp"
  strip -o "$fs/usr/local/bin/redeploy-operator" "$binary"
  # Each library at the path the binary's loader looks for it.
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
    mkdir -p "$fs$(dirname "$lib")"
    cp -L "$lib" "$fs$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$fs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\nnonroot:x:65532:\n' >"$fs/etc/group"
  printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
  pack() { # owner staging-dir tarball member: reproducible (sorted, mtime 0, one owner)
    tar --sort=name --mtime=@0 --owner="$1" --group="$1" --numeric-owner --format=posix \
      --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$2" -cf "$3" "$4"
  }
  # The user's home (that directory only) is its own, as in distroless: a second layer.
  mkdir -p "$fs/home"
  pack 0 "$fs" "$tmp/layer.tar" .
  pack 65532 "$tmp/home" "$tmp/home.tar" ./home/nonroot

  # crane assembles images in a registry: a throwaway one on loopback.
  for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 40000))
    printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
      "$tmp/registry" "$port" >"$tmp/registry.yml"
    "$bin/registry" serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 1 100); do
      curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null && break 2
      kill -0 "$registry_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill "$registry_pid" 2>/dev/null || true
    registry_pid=""
  done
  [ -n "$registry_pid" ] || { log "the throwaway registry did not start: $(cat "$tmp/registry.log")"; exit 1; }

  crane() { "$bin/crane" --insecure "$@"; }
  ref="127.0.0.1:$port/redeploy-operator"
  crane append --oci-empty-base -f "$tmp/layer.tar" -f "$tmp/home.tar" -t "$ref:layer" >/dev/null
  crane mutate --set-platform=linux/amd64 --user=65532:65532 \
    --entrypoint=/usr/local/bin/redeploy-operator --cmd=run \
    --exposed-ports=8080/tcp,9090/tcp \
    -e PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    -l org.opencontainers.image.title=redeploy-operator \
    -l "org.opencontainers.image.version=$version" \
    -l "org.opencontainers.image.revision=$commit" \
    -l org.opencontainers.image.licenses=Apache-2.0 \
    -t "$ref:$version" "$ref:layer" >/dev/null
  crane pull "$ref:$version" "$tmp/image.tar"
  mv "$tmp/image.tar" "$tarball"
  echo "$key" >"$out/key"
  log "built $tarball ($(du -h "$tarball" | cut -f1); layer $(du -h "$tmp/layer.tar" | cut -f1) uncompressed) in $(($(date +%s) - start))s"
fi

if [ -n "${IMAGE:-}" ]; then
  "$bin/crane" --insecure push "$tarball" "$IMAGE" >&2
  log "pushed $IMAGE"
fi
echo "$tarball"
