#!/usr/bin/env bash
# `make demo`: the whole path of a redeployment hook on the local control plane.
#
#   1. starts the control plane (`make cluster`), or reuses the running one
#   2. installs the CRDs and waits for them to be Established
#   3. starts target/debug/redeploy-operator on loopback (log: .cluster/operator.log)
#   4. applies examples/ into a fresh namespace demo-<timestamp>
#   5. prints the App's hook URL
#   6. POSTs a real GitHub push (the shared fixture) with a valid X-Hub-Signature-256
#   7. follows the Redeployment until it is Succeeded or Failed
#   8. checks that Deployment web runs the pushed commit's image and is rolled out
#
# Exits 0 only when step 8 holds. The operator is stopped on exit; the control
# plane keeps running (`make cluster-down` stops it). Each run deletes the
# namespaces of earlier runs.
#
# Environment: CLUSTER_DIR (default .cluster), DEMO_TIMEOUT (seconds to wait
# for the Redeployment, default 120), CARGO_TARGET_DIR, MAKE.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cluster_dir=${CLUSTER_DIR:-$root/.cluster}
timeout=${DEMO_TIMEOUT:-120}
operator=${CARGO_TARGET_DIR:-$root/target}/debug/redeploy-operator
fixture=$root/tests/fixtures/webhooks/github/push-new-branch.json
make_cmd=${MAKE:-make}

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$plain"; }
note() { printf '    %s\n' "$*"; }
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

[ -x "$operator" ] || die "$operator is missing: run \`make demo\`, which builds it"
[ -f "$fixture" ] || die "the GitHub push fixture $fixture is missing"
command -v curl >/dev/null || die "curl is needed to call the hook"

operator_pid=
demo_ok=
cleanup() {
  local rc=$?
  if [ -z "$demo_ok" ] && [ -f "$cluster_dir/operator.log" ]; then
    printf '\n--- last lines of %s ---\n' "$cluster_dir/operator.log" >&2
    tail -n 40 "$cluster_dir/operator.log" >&2 || true
  fi
  if [ -n "$operator_pid" ] && kill -0 "$operator_pid" 2>/dev/null; then
    kill "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
step "Control plane"
bin=$(bash "$root/hack/build-control-plane.sh")
"$make_cmd" -s --no-print-directory -C "$root" cluster CLUSTER_DIR="$cluster_dir" |
  awk -v bin="$bin" '$0 != bin { print "    " $0 }'
export KUBECONFIG="$cluster_dir/kubeconfig" PATH="$bin:$PATH"
[ -f "$KUBECONFIG" ] || die "no kubeconfig at $KUBECONFIG"

# ---------------------------------------------------------------------------
step "Install the CRDs"
kubectl apply -f crds/ | sed 's/^/    /'
kubectl wait --for=condition=Established --timeout=60s -f crds/ | sed 's/^/    /'

# ---------------------------------------------------------------------------
step "Start the operator"
# A port is taken when something accepts connections on it.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() { # preferred-port
  local port=$1
  while ! port_free "$port"; do port=$((20000 + RANDOM % 40000)); done
  echo "$port"
}
hook_port=
for attempt in 1 2 3; do
  if [ "$attempt" = 1 ]; then
    hook_port=$(pick_port 18080) metrics_port=$(pick_port 19090)
  else
    hook_port=$(pick_port $((20000 + RANDOM % 40000))) metrics_port=$(pick_port $((20000 + RANDOM % 40000)))
  fi
  [ "$hook_port" != "$metrics_port" ] || continue
  NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$operator" run \
    --public-url "http://127.0.0.1:$hook_port" \
    --hook-addr "127.0.0.1:$hook_port" \
    --metrics-addr "127.0.0.1:$metrics_port" \
    >"$cluster_dir/operator.log" 2>&1 &
  operator_pid=$!
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$metrics_port/readyz" 2>/dev/null && break
    kill -0 "$operator_pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$operator_pid" 2>/dev/null; then
    curl -fsS -o /dev/null "http://127.0.0.1:$metrics_port/readyz" || die "the operator did not get ready"
    break
  fi
  wait "$operator_pid" 2>/dev/null || true
  operator_pid=
  note "the operator exited at start (a port taken meanwhile?); trying other ports"
done
[ -n "$operator_pid" ] || die "the operator did not start"
note "redeploy-operator run --public-url http://127.0.0.1:$hook_port --hook-addr 127.0.0.1:$hook_port --metrics-addr 127.0.0.1:$metrics_port"
note "ready (pid $operator_pid, log: $cluster_dir/operator.log)"

# ---------------------------------------------------------------------------
ns=demo-$(date +%Y%m%d-%H%M%S)
step "Apply examples/ into namespace $ns"
old=$(kubectl get namespaces -l redeploy.dev/demo=true -o name)
if [ -n "$old" ]; then
  # shellcheck disable=SC2086 # one name per word
  kubectl delete --wait=false $old | sed 's/^/    /'
fi
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" redeploy.dev/demo=true >/dev/null
# The hand-made Redeployment last, once the operator has seen the Services
# (it writes their status.type): one that names an unknown Service fails.
for f in examples/*.yaml; do
  [ "$f" = examples/redeployment.yaml ] || kubectl apply -n "$ns" -f "$f" | sed 's/^/    /'
done
kubectl wait -n "$ns" --for=jsonpath='{.status.type}' --timeout=60s services.redeploy.dev/web services.redeploy.dev/worker |
  sed 's/^/    /'
kubectl apply -n "$ns" -f examples/redeployment.yaml | sed 's/^/    /'

sha=$(sed -n 's/^ *"after": *"\([0-9a-f]\{40\}\)".*/\1/p' "$fixture" | head -n 1)
[ -n "$sha" ] || die "no \"after\" commit in $fixture"
image_repo=$(kubectl get services.redeploy.dev web -n "$ns" -o jsonpath='{.spec.build.image}')
expected_image=$image_repo:$sha

# The examples build `web` with BuildKit. Pods do not run on this control
# plane, so the demo gives `web` a stand-in builder: kwok completes its pod and
# copies the annotation into the termination message, which is how a build
# reports {"commit","image"} (src/build/mod.rs). On a real cluster the same
# container would report the ref it was given without building anything.
report="{\"commit\":\"$sha\",\"image\":\"$expected_image\"}"
patch_file=$cluster_dir/demo-build-template.yaml
cat >"$patch_file" <<EOF
spec:
  build:
    template:
      metadata:
        annotations:
          testenv.redeploy.dev/termination-message: '$report'
      spec:
        containers:
        - name: build
          image: docker.io/library/busybox:1.37
          command:
          - sh
          - -c
          - printf '{"commit":"%s","image":"%s"}' "\$REDEPLOY_GIT_REF" "\$REDEPLOY_IMAGE" >/dev/termination-log
EOF
kubectl patch services.redeploy.dev web -n "$ns" --type merge --patch-file "$patch_file" | sed 's/^/    /'
note "NOTE: on this local control plane pods do not run; the build Job is completed by kwok."
note "      Demo-only overlay: Service web gets spec.build.template (instead of BuildKit)"
note "      whose pod reports $report"

# ---------------------------------------------------------------------------
step "The App's hook URL"
url=
for _ in $(seq 1 300); do
  url=$(kubectl get secret hello-world-hook -n "$ns" -o jsonpath='{.data.url}' 2>/dev/null | base64 -d) || url=
  [ -n "$url" ] && break
  sleep 0.2
done
[ -n "$url" ] || die "the operator did not write Secret hello-world-hook"
note "kubectl get secret hello-world-hook -n $ns -o jsonpath='{.data.url}' | base64 -d"
note "$url"

# ---------------------------------------------------------------------------
step "POST a GitHub push (refs/heads/master, $sha)"
secret=$(kubectl get secret hello-world-webhook-secrets -n "$ns" -o jsonpath='{.data.github}' | base64 -d)
if command -v openssl >/dev/null; then
  hmac=$(openssl dgst -sha256 -hmac "$secret" <"$fixture" | awk '{print $NF}')
elif command -v python3 >/dev/null; then
  hmac=$(python3 -c 'import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())' "$secret" "$fixture")
else
  die "openssl or python3 is needed to sign the payload"
fi
if [ -r /proc/sys/kernel/random/uuid ]; then
  delivery=$(cat /proc/sys/kernel/random/uuid)
elif command -v uuidgen >/dev/null; then
  delivery=$(uuidgen | tr '[:upper:]' '[:lower:]')
else
  delivery=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | sed 's/\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)/\1-\2-\3-\4-/')
fi
note "X-GitHub-Event: push"
note "X-GitHub-Delivery: $delivery"
note "X-Hub-Signature-256: sha256=$hmac"
response=$cluster_dir/demo-response.json
code=$(curl -sS -o "$response" -w '%{http_code}' -X POST \
  -H 'Content-Type: application/json' \
  -H 'X-GitHub-Event: push' \
  -H "X-GitHub-Delivery: $delivery" \
  -H "X-Hub-Signature-256: sha256=$hmac" \
  --data-binary @"$fixture" "$url")
note "HTTP $code $(cat "$response")"
[ "$code" = 202 ] || die "the hook answered $code, not 202"
rd=$(sed -n 's/.*"redeployment": *"\([^"]*\)".*/\1/p' "$response")
[ -n "$rd" ] || die "the answer names no Redeployment"

# ---------------------------------------------------------------------------
step "Follow Redeployment $rd (kubectl get rd $rd -n $ns)"
services_path='{range .status.services[*]}{.service}|{.phase}|{.buildJob}|{.image}|{.message}{"\n"}{end}'
# One line per Service: its phase, its image (or build Job while building) and message.
show_services() {
  local service phase job image message
  while IFS='|' read -r service phase job image message; do
    [ -n "$service" ] || continue
    printf '            %-8s %-10s' "$service:" "$phase"
    if [ -n "$image" ]; then printf ' %s' "$image"; elif [ -n "$job" ]; then printf ' build Job %s' "$job"; fi
    [ -z "$message" ] || printf ' (%s)' "$message"
    printf '\n'
  done
}
start=$SECONDS
last=
phase=
while :; do
  phase=$(kubectl get rd "$rd" -n "$ns" -o jsonpath='{.status.phase}')
  services=$(kubectl get rd "$rd" -n "$ns" -o jsonpath="$services_path")
  state="${phase:-Pending}|$services"
  if [ "$state" != "$last" ]; then
    printf '    [%3ss] %s\n' "$((SECONDS - start))" "${phase:-Pending}"
    printf '%s\n' "$services" | show_services
    last=$state
  fi
  case $phase in Succeeded | Failed | Superseded | Canceled) break ;; esac
  [ $((SECONDS - start)) -lt "$timeout" ] || die "Redeployment $rd did not finish within ${timeout}s (phase ${phase:-none})"
  sleep 1
done
[ "$phase" = Succeeded ] || die "Redeployment $rd is $phase: $(kubectl get rd "$rd" -n "$ns" -o jsonpath='{.status.message}')"

# ---------------------------------------------------------------------------
step "Check Deployment web"
image=$(kubectl get deployment web -n "$ns" -o jsonpath='{.spec.template.spec.containers[?(@.name=="web")].image}')
note "image: $image"
[ "$image" = "$expected_image" ] || die "Deployment web runs $image, not $expected_image"
kubectl rollout status deployment/web -n "$ns" --timeout=60s | sed 's/^/    /'
echo
kubectl get redeploy -n "$ns"

demo_ok=1
step "Demo passed"
note "The operator is stopped; the control plane keeps running. Look around with"
note "  export KUBECONFIG=$KUBECONFIG PATH=\"$bin:\$PATH\""
note "  kubectl get redeploy,deploy,jobs -n $ns"
note "make cluster-down stops it."
