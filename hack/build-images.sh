#!/usr/bin/env bash
# Builds the layers of the real node's images from what this machine has,
# without a container daemon, and prints the directory holding them:
#
#   busybox.tar   Debian's busybox-static with its applets: the test apps' base
#                 image (httpd, sh, wget) and, with `sleep` as its entrypoint,
#                 the pod sandbox ("pause") image
#   buildkit.tar  BuildKit's buildkitd, buildctl and buildctl-daemonless.sh, a
#                 static runc, and Debian's git with its git-core helpers and
#                 shared libraries; stacked on busybox.tar it is the builder
#
# Usage: build-images.sh NODE_BIN (the directory hack/build-node.sh prints).
# The directory is named by a hash of every input file and of this script, and
# the tarballs are reproducible (sorted, owned by root, mtime 0): a warm run
# builds nothing, and the same inputs give the same image digests. The testenv
# crate assembles and pushes the images (crane append + mutate) when a test
# starts a real node.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
bin=${1:?usage: build-images.sh NODE_BIN}

need() { [ -e "$1" ] || { echo "build-images: $1 is missing: $2" >&2; exit 1; }; }
need /bin/busybox "apt-get install busybox-static"
need /usr/bin/git "apt-get install git"
daemonless=$(cd "$here/buildkit" && GOTOOLCHAIN=local go list -m -f '{{.Dir}}' github.com/moby/buildkit)/examples/buildctl-daemonless/buildctl-daemonless.sh
need "$daemonless" "BuildKit's module source (go mod download in hack/buildkit)"

# Git and every shared library its ELF helpers load (the loader included).
git_files() {
  echo /usr/bin/git
  find /usr/lib/git-core -type f -o -type l
  { file -L /usr/bin/git /usr/lib/git-core/* | awk -F: '/ELF/ { print $1 }' | xargs ldd; } 2>/dev/null |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }'
}
mapfile -t git_list < <(git_files | sort -u)
inputs=(/bin/busybox "$bin/buildkitd" "$bin/buildctl" "$bin/runc-static" "$daemonless" "${git_list[@]}")

cache_root=${REDEPLOY_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redeploy-operator}
key=$({ cat "$0"; printf '%s\n' "${inputs[@]}"; cat "${inputs[@]}"; } | sha256sum | cut -c1-16)
out="$cache_root/images-$key"
if [ -f "$out/buildkit.tar" ]; then echo "$out"; exit 0; fi

echo "build-images: building image layers into $out" >&2
start=$(date +%s)
tmp=$(mktemp -d "$cache_root/.images.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

pack() { # staging-dir tarball
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$1" -cf "$2" .
}

# busybox: the binary and a symlink per applet, a root and a nobody user.
root="$tmp/busybox"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/var/www"
chmod 1777 "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
/bin/busybox --list-full | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -s /bin/busybox "$root/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
pack "$root" "$tmp/busybox.tar"

# BuildKit: its binaries, a static runc (BuildKit's OCI worker), git.
root="$tmp/buildkit"
mkdir -p "$root/usr/bin" "$root/run/buildkit" "$root/var/lib/buildkit" "$root/etc/buildkit"
cp "$bin/buildkitd" "$bin/buildctl" "$daemonless" "$root/usr/bin/"
chmod 0755 "$root/usr/bin/buildctl-daemonless.sh"
cp "$bin/runc-static" "$root/usr/bin/runc"
for f in "${git_list[@]}"; do
  mkdir -p "$root$(dirname "$f")"
  if [ -L "$f" ] && [ "$(dirname "$f")" = /usr/lib/git-core ]; then
    cp -P "$f" "$root$f" # git-core's links to git stay links
  else
    cp -L "$f" "$root$f"
  fi
done
pack "$root" "$tmp/buildkit.tar"

mkdir -p "$out.new"
mv "$tmp/busybox.tar" "$tmp/buildkit.tar" "$out.new/"
rm -rf "$out" && mv "$out.new" "$out"
echo "build-images: busybox.tar $(du -h "$out/busybox.tar" | cut -f1), buildkit.tar $(du -h "$out/buildkit.tar" | cut -f1) in $(($(date +%s) - start))s" >&2
echo "$out"
