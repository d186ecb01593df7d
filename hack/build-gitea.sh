#!/usr/bin/env bash
# Builds Gitea from its Go module (pinned in hack/versions.env and hack/gitea)
# into a cache outside the repository, keyed by its version, and prints that
# directory. A warm cache builds nothing.
#
# The directory is what Gitea's STATIC_ROOT_PATH needs: the `gitea` binary and
# copies of the module's `options/` (locales, licences, ...), `templates/` and
# `public/`, which a build without generated bindata reads from disk (it does
# not start without its locales). SQLite needs CGO (gcc) and Gitea's
# `sqlite sqlite_unlock_notify` tags.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=1

cache_root=${REDEPLOY_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/redeploy-operator}
dir="$cache_root/gitea-$GITEA_VERSION"
tags="sqlite sqlite_unlock_notify"

log() { echo "build-gitea: $*" >&2; }

if [ ! -x "$dir/gitea" ] || [ ! -d "$dir/options/locale" ] || [ ! -d "$dir/templates" ]; then
  log "building Gitea $GITEA_VERSION (cold: minutes; needs gcc)"
  mkdir -p "$cache_root"
  # Built and assembled under a temporary name so an interrupted build is never cached.
  tmp=$(mktemp -d "$cache_root/.gitea.XXXXXX")
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  (cd "$here/gitea" && go build -trimpath -tags "$tags" \
    -ldflags "-s -w -X main.Version=${GITEA_VERSION#v} -X 'main.Tags=$tags'" \
    -o "$tmp/gitea" code.gitea.io/gitea)
  log "built gitea in $(($(date +%s) - start))s"
  src=$(cd "$here/gitea" && go mod download code.gitea.io/gitea && go list -m -f '{{.Dir}}' code.gitea.io/gitea)
  for d in options templates public; do
    cp -R "$src/$d" "$tmp/$d"
  done
  # The module cache is read-only; the copies need not be.
  chmod -R u+w "$tmp"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
fi

echo "$dir"
