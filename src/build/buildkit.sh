# The default build: resolve the ref to a commit, build that commit's Git
# context with BuildKit, push `<repository>:<commit>`, and report
# {"commit","image","digest"} as the container's termination message.
#
# Runs as `sh -c`, as root in a privileged pod, in a BuildKit image with
# buildctl-daemonless.sh, a POSIX sh, and git (BuildKit's Git source runs the
# git binary; ssh for SSH remotes): moby/buildkit, or the operator's
# --builder-image.
# Every input arrives in an environment variable (see src/build/mod.rs); none
# is ever pasted into this text.
set -euf
umask 077

creds=/run/redeploy/git
termination=/dev/termination-log
work="${TMPDIR:-/tmp}/redeploy-build"
mkdir -p "$work"
export GIT_TERMINAL_PROMPT=0

remote="$REDEPLOY_BUILDKIT_REMOTE"
ref="$REDEPLOY_GIT_REF"
header=""

# Git credentials (spec.git.secretRef), mounted only when set.
set --
if [ -f "$creds/password" ]; then
  # BuildKit's GIT_AUTH_HEADER secret is the whole Authorization header value;
  # its GIT_AUTH_TOKEN would fix the user name to x-access-token, which
  # Bitbucket app passwords and GitLab deploy tokens do not accept.
  user=x-access-token
  if [ -f "$creds/username" ]; then user="$(cat "$creds/username")"; fi
  header="basic $(printf '%s:%s' "$user" "$(cat "$creds/password")" | base64 | tr -d '\n')"
  printf '%s' "$header" > "$work/git-auth-header"
  if [ -n "${REDEPLOY_GIT_HOST:-}" ]; then
    set -- "$@" --secret "id=GIT_AUTH_HEADER.$REDEPLOY_GIT_HOST,src=$work/git-auth-header"
  fi
fi
if [ -f "$creds/ssh-privatekey" ]; then
  cp "$creds/ssh-privatekey" "$work/ssh-key"
  chmod 600 "$work/ssh-key"
  set -- "$@" --ssh "default=$work/ssh-key"
  export GIT_SSH_COMMAND="ssh -i '$work/ssh-key' -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile='$work/known_hosts'"
fi

ls_remote() {
  if [ -n "$header" ]; then
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=http.extraHeader GIT_CONFIG_VALUE_0="Authorization: $header" \
      git ls-remote "$remote" "$@"
  else
    git ls-remote "$remote" "$@"
  fi
}

# A full SHA is built as it is; a branch, tag or HEAD is resolved first, so
# that the image is built from, tagged with and reported as one commit even
# when the branch moves during the build.
if printf '%s' "$ref" | grep -Eqx '[0-9a-f]{40}'; then
  commit="$ref"
else
  case "$ref" in
    HEAD) candidates="HEAD" ;;
    refs/*) candidates="$ref^{} $ref" ;;
    *) candidates="refs/heads/$ref refs/tags/$ref^{} refs/tags/$ref" ;;
  esac
  # shellcheck disable=SC2086 # one pattern per word; refs hold no blanks or globs
  refs="$(ls_remote $candidates)"
  commit=""
  for candidate in $candidates; do
    commit="$(printf '%s\n' "$refs" | awk -v want="$candidate" '$2 == want { print $1; exit }')"
    if [ -n "$commit" ]; then break; fi
  done
  if [ -z "$commit" ]; then
    echo "redeploy: $ref is not a branch or tag of $REDEPLOY_GIT_REPOSITORY (give a commit as its full 40-character SHA)" >&2
    exit 1
  fi
fi
echo "redeploy: building $REDEPLOY_GIT_REPOSITORY at $ref ($commit)"

image="$REDEPLOY_IMAGE_REPOSITORY:$commit"
context="$remote#$commit"
if [ "$REDEPLOY_CONTEXT" != . ]; then context="$context:$REDEPLOY_CONTEXT"; fi

buildctl-daemonless.sh build \
  --progress plain \
  --frontend dockerfile.v0 \
  --opt "context=$context" \
  --opt "filename=$REDEPLOY_DOCKERFILE" \
  --opt "build-arg:REDEPLOY_GIT_COMMIT=$commit" \
  --output "type=image,name=$image,push=true" \
  --metadata-file "$work/metadata.json" \
  "$@"

# buildctl writes the exporter response as indented JSON, one key a line.
digest="$(grep -o '"containerimage.digest": *"[^"]*"' "$work/metadata.json" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/')" || digest=""
if [ -n "$digest" ]; then
  result="$(printf '{"commit":"%s","image":"%s","digest":"%s"}' "$commit" "$image" "$digest")"
else
  result="$(printf '{"commit":"%s","image":"%s"}' "$commit" "$image")"
fi
printf '%s' "$result" > "$termination"
echo "redeploy: pushed $image $digest"
