#!/usr/bin/env bash
# Runs every fuzz target (or those named in FUZZ_TARGETS) for FUZZ_SECONDS
# each, one after the other, and fails if any of them finds a crash (a panic,
# a broken invariant, a timeout or running out of memory).
#
# Each target's corpus lives in fuzz/target/corpus/<target>: it keeps what
# earlier runs found, and is seeded on every run from the webhook fixtures
# (tests/fixtures/webhooks, with the headers their providers send) and from
# fuzz/seeds/<target>. A crashing input is written to fuzz/artifacts/<target>/;
# `cargo +nightly fuzz run <target> <file>` replays it.
#
#   FUZZ_SECONDS     seconds per target (default 20)
#   FUZZ_TARGETS     space-separated target names (default: all)
#   FUZZ_SANITIZER   cargo-fuzz --sanitizer (default none: the code under test is
#                    safe Rust, and without AddressSanitizer it runs about twice as fast)
#   FUZZ_TOOLCHAIN   the nightly toolchain cargo-fuzz builds with (default nightly)
#   FUZZ_RUNS        run each target for this many inputs instead of FUZZ_SECONDS
#   FUZZ_SEED        libFuzzer's random seed (default: a new one each run). With
#                    FUZZ_RUNS, a fixed seed and a fresh corpus, a run is
#                    repeatable: CI uses both, so it checks what was checked
#                    before a change landed instead of rolling new dice
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
sanitizer=${FUZZ_SANITIZER:-none}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
budget=(-max_total_time="$seconds")
what="${seconds}s"
if [ -n "${FUZZ_RUNS:-}" ]; then budget=(-runs="$FUZZ_RUNS"); what="$FUZZ_RUNS inputs"; fi
if [ -n "${FUZZ_SEED:-}" ]; then budget+=(-seed="$FUZZ_SEED"); what="$what, seed $FUZZ_SEED"; fi
fixtures=tests/fixtures/webhooks
corpora=fuzz/target/corpus
fuzz=(cargo "+$toolchain" fuzz)

if ! "${fuzz[@]}" --version >/dev/null 2>&1; then
  echo "make fuzz needs cargo-fuzz and a nightly toolchain:" >&2
  echo "  rustup toolchain install nightly && cargo install cargo-fuzz --locked" >&2
  exit 1
fi

all_targets=$("${fuzz[@]}" list)
targets=${FUZZ_TARGETS:-$all_targets}

# seed TARGET NAME SELECTOR [FILE]: a provider target's input is one selector
# byte (which call, see the target's CALLS) and the body.
seed() {
  local dir=$corpora/$1
  mkdir -p "$dir"
  { printf "\\x$3"; if [ -n "${4:-}" ]; then cat "$4"; fi; } >"$dir/seed-$2"
}

# seed_headers NAME FILE HEADER...: provider_any_headers reads header lines,
# an empty line, then the body.
seed_headers() {
  local dir=$corpora/provider_any_headers name=$1 file=$2
  shift 2
  mkdir -p "$dir"
  { printf '%s\n' "$@"; printf '\n'; cat "$file"; } >"$dir/seed-$name"
}

seed provider_github push 00 $fixtures/github/push-new-branch.json
seed provider_github push-tag-deleted 00 $fixtures/github/push-tag-deleted.json
seed provider_github ping 01 $fixtures/github/ping.json
seed provider_github deployment 02 $fixtures/github/deployment.json
seed provider_github deployment-status 03 $fixtures/github/deployment-status.json
seed provider_github empty 00
printf '\x80git_ref=v1.2.3&payload=' >$corpora/provider_github/seed-form
seed provider_bitbucket_cloud repo-push 00 $fixtures/bitbucket-cloud/repo-push.json
seed provider_bitbucket_server refs-changed 00 $fixtures/bitbucket-server/repo-refs-changed.json
seed provider_bitbucket_server ping 01
seed provider_gitlab push 00 $fixtures/gitlab/push-event.json
seed provider_gitlab tag 01 $fixtures/gitlab/tag-event.json
seed provider_gitea gitea-push 00 $fixtures/gitea/push-event.json
seed provider_gitea forgejo-push 01 $fixtures/gitea/push-event.json
seed provider_gitea gogs-push 02 $fixtures/gogs/push-event.json
seed provider_azure_devops git-push 00 $fixtures/azure-devops/git-push.json
seed provider_dockerhub push 00 $fixtures/dockerhub/push.json
for file in $fixtures/*/*.json; do
  name=$(basename "$(dirname "$file")")-$(basename "$file" .json)
  seed provider_by_shape "$name" 00 "$file"
done
printf '\x00{"repository":"https://github.com/o/r","ref":"refs/heads/main","sha":"6113728f27ae82c7b1a177c8d03f9e96e0adf246"}' \
  >$corpora/provider_by_shape/seed-generic
seed_headers github-push $fixtures/github/push-new-branch.json \
  'X-GitHub-Event: push' 'X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958' 'Content-Type: application/json'
seed_headers bitbucket-cloud $fixtures/bitbucket-cloud/repo-push.json \
  'X-Event-Key: repo:push' 'X-Request-UUID: afe3d1a4-6e71-4a2b-8f3e-2c1b0a9d8e7f'
seed_headers bitbucket-server $fixtures/bitbucket-server/repo-refs-changed.json \
  'X-Event-Key: repo:refs_changed' 'X-Request-Id: d5b6a5f2-7b1e-4d0a-9c3f-3f0e2b1a4c5d'
seed_headers gitlab $fixtures/gitlab/push-event.json \
  'X-Gitlab-Event: Push Hook' 'X-Gitlab-Event-UUID: 13792a34-cac6-4fda-95a8-c58e00a3954e'
seed_headers forgejo $fixtures/gitea/push-event.json \
  'X-Forgejo-Event: push' 'X-Forgejo-Delivery: 0b1ec6b4' 'X-Gitea-Event: push' 'X-Gitea-Delivery: 0b1ec6b4'
seed_headers gogs $fixtures/gogs/push-event.json 'X-Gogs-Event: push' 'X-Gogs-Delivery: 1a2f8c3e'
seed_headers azure $fixtures/azure-devops/git-push.json 'Content-Type: application/json; charset=utf-8'
for dir in fuzz/seeds/*/; do
  target=$(basename "$dir")
  mkdir -p "$corpora/$target"
  cp "$dir"* "$corpora/$target/"
done

echo "--- fuzz: building the targets (sanitizer: $sanitizer)"
"${fuzz[@]}" build --sanitizer "$sanitizer" --debug-assertions

mkdir -p fuzz/target/logs
failed=()
for target in $targets; do
  log=fuzz/target/logs/$target.log
  mkdir -p "$corpora/$target"
  echo "--- fuzz: $target for $what"
  if "${fuzz[@]}" run --sanitizer "$sanitizer" --debug-assertions "$target" "$corpora/$target" -- \
    "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -1)
    echo "    ok: ${runs:-see $log}; corpus $(find "$corpora/$target" -type f | wc -l) inputs"
  else
    failed+=("$target")
    echo "    FAILED (log: $log):"
    grep -E -A12 'panicked at|ERROR: libFuzzer|Test unit written to|SUMMARY' "$log" | head -40 | sed 's/^/    /'
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) found a crash: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: every target ran for $what without a crash"
