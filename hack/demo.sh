#!/usr/bin/env bash
# `make demo`: the whole path of a redeployment hook on the local control plane.
#
#   1. starts the control plane (`make cluster`), or reuses the running one;
#      it runs the real node (kubelet, containerd, a registry) where this
#      machine can run one
#   2. installs the CRDs and waits for them to be Established
#   3. starts target/debug/redeploy-operator on loopback (log: .cluster/operator.log)
#   4. applies the App into a fresh namespace demo-<timestamp>, with
#      - on the real node: a Git repository holding a tiny web app, served by
#        the control plane's `git daemon`, the Git-built Service web and its
#        Deployment (a demo overlay of examples/, printed), the default
#        BuildKit build for real;
#      - else (kwok completes pods): examples/ as they are, and a stand-in
#        builder for Service web, with a one-line note saying so
#   5. prints the App's hook URL
#   6. POSTs a GitHub push with a valid X-Hub-Signature-256: of the local
#      repository's commit on the real node, else the shared fixture
#   7. follows the Redeployment until it is Succeeded or Failed
#   8. checks that Deployment web runs the pushed commit's image and is rolled
#      out; on the real node it prints the BuildKit Job's log lines and the
#      image digest, and fetches /version from a Ready pod of that digest
#
# Exits 0 only when step 8 holds (on the real node: /version answers the
# pushed commit). The operator is stopped on exit; the control plane keeps
# running (`make cluster-down` stops it). Each run deletes the namespaces of
# earlier runs.
#
# Environment: CLUSTER_DIR (default .cluster), DEMO_TIMEOUT (seconds to wait
# for the Redeployment, default 120, 300 on the real node), CARGO_TARGET_DIR, MAKE.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cluster_dir=${CLUSTER_DIR:-$root/.cluster}
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

# The real node, if the control plane runs one (described by real-node.env).
real=
if [ -f "$cluster_dir/real-node.env" ]; then
  # shellcheck source=/dev/null # written by redeploy-testenv: REAL_NODE_* assignments
  . "$cluster_dir/real-node.env"
  ready=$(kubectl get node "$REAL_NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || ready=
  if [ "$ready" = True ]; then
    real=1
  else
    why="node $REAL_NODE is not Ready"
  fi
elif [ -f "$cluster_dir/real-node-unavailable" ]; then
  why=$(head -n 1 "$cluster_dir/real-node-unavailable")
else
  why="the running control plane was started without it; make cluster-down, then make demo"
fi
if [ -n "$real" ]; then
  note "real node $REAL_NODE: the push is built by BuildKit and its pods really run"
  timeout=${DEMO_TIMEOUT:-300}
else
  note "NOTE: no real node ($why): falling back to kwok, which completes pods, and a stand-in builder."
  timeout=${DEMO_TIMEOUT:-120}
fi

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
# On the real node the default build Job runs the BuildKit image built on this
# machine, and pushes to (and the operator reads digests from) the node's
# plain-HTTP registry.
builder_flags=()
if [ -n "$real" ]; then
  builder_flags=(--builder-image "$REAL_NODE_BUILDKIT_IMAGE" --insecure-registry "$REAL_NODE_REGISTRY")
fi
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
    "${builder_flags[@]}" \
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
note "redeploy-operator run --public-url http://127.0.0.1:$hook_port --hook-addr 127.0.0.1:$hook_port --metrics-addr 127.0.0.1:$metrics_port${builder_flags[*]:+ ${builder_flags[*]}}"
note "ready (pid $operator_pid, log: $cluster_dir/operator.log)"

# ---------------------------------------------------------------------------
ns=demo-$(date +%Y%m%d-%H%M%S)
old=$(kubectl get namespaces -l redeploy.dev/demo=true -o name)
if [ -n "$real" ]; then
  step "Apply the App and a Git-built Service into namespace $ns"
else
  step "Apply examples/ into namespace $ns"
fi
if [ -n "$old" ]; then
  # shellcheck disable=SC2086 # one name per word
  kubectl delete --wait=false $old | sed 's/^/    /'
fi
kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" redeploy.dev/demo=true >/dev/null

if [ -n "$real" ]; then
  # The operator's default build Job carries no toleration of the real node's
  # taint: make the real node the only one new pods land on.
  kubectl cordon kwok-node-0 | sed 's/^/    /'
  if [ -n "$(kubectl get node "$REAL_NODE" -o jsonpath='{.spec.taints}')" ]; then
    kubectl taint node "$REAL_NODE" redeploy.dev/node- | sed 's/^/    /'
  fi

  # The app: busybox httpd serving /version, the commit it is built from
  # (the default build passes it as the build argument REDEPLOY_GIT_COMMIT).
  repo=$REAL_NODE_GIT_DIR/hello-world/web.git
  work=$cluster_dir/demo-web
  git_url=$REAL_NODE_GIT_URL/hello-world/web.git
  demo_git() {
    GIT_CONFIG_NOSYSTEM=1 HOME=$work GIT_AUTHOR_NAME=Demo GIT_AUTHOR_EMAIL=demo@example.com \
      GIT_COMMITTER_NAME=Demo GIT_COMMITTER_EMAIL=demo@example.com git -C "$work" "$@"
  }
  rm -rf "$repo" "$work"
  mkdir -p "$work" "$(dirname "$repo")"
  git init -q --bare -b main "$repo"
  demo_git init -q -b main
  cat >"$work/Dockerfile" <<DOCKERFILE
FROM $REAL_NODE_BASE_IMAGE
ARG REDEPLOY_GIT_COMMIT
RUN mkdir -p /www && echo "\$REDEPLOY_GIT_COMMIT" > /www/version && touch /www/ready
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE
  demo_git add Dockerfile
  demo_git commit -q -m "Serve the commit at /version ($ns)"
  demo_git push -q "$repo" main
  sha=$(demo_git rev-parse HEAD)
  note "repository $git_url (the control plane's git daemon), main at $sha:"
  sed 's/^/      /' "$work/Dockerfile"

  kubectl apply -n "$ns" -f examples/app.yaml -f examples/profile.yaml | sed 's/^/    /'
  image_repo=$REAL_NODE_REGISTRY/hello-world/web
  overlay=$cluster_dir/demo-real-node.yaml
  cat >"$overlay" <<OVERLAY
# examples/services.yaml's Service web and examples/workloads.yaml's
# Deployment web, adapted to the real node by hack/demo.sh.
apiVersion: redeploy.dev/v1alpha1
kind: Service
metadata:
  name: web
spec:
  app: hello-world
  target:
    kind: Deployment
    name: web
    container: web
  git:
    repository: $git_url
    branch: main
  build:
    image: $image_repo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app.kubernetes.io/name: web, app.kubernetes.io/part-of: hello-world}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: web}
  template:
    metadata:
      labels: {app.kubernetes.io/name: web, app.kubernetes.io/part-of: hello-world}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: $REAL_NODE_BASE_IMAGE
        # The base image serves "initial" until the rollout brings an image with /www/version.
        command: [sh, -c, 'test -f /www/version || { mkdir -p /www && echo initial > /www/version && touch /www/ready; }; exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
          periodSeconds: 1
OVERLAY
  kubectl apply -n "$ns" -f "$overlay" | sed 's/^/    /'
  note "NOTE: demo overlay of examples/ for the real node ($overlay):"
  note "      Service web builds $git_url (branch main) into $image_repo;"
  note "      Deployment web: 1 replica of the node's busybox base image running httpd, Ready once /ready answers;"
  note "      no Service worker: its image (nginx, Docker Hub) is out of reach of the node, which reaches only this machine."
  kubectl wait -n "$ns" --for=jsonpath='{.status.type}' --timeout=60s services.redeploy.dev/web | sed 's/^/    /'
  kubectl rollout status deployment/web -n "$ns" --timeout=180s | sed 's/^/    /'
  expected_image=$image_repo:$sha

  # GitHub's push payload; the repository's clone_url is the local Git server.
  payload=$cluster_dir/demo-push.json
  cat >"$payload" <<PAYLOAD
{
  "ref": "refs/heads/main",
  "before": "0000000000000000000000000000000000000000",
  "after": "$sha",
  "created": true, "deleted": false, "forced": false,
  "base_ref": null,
  "compare": "$git_url",
  "repository": {
    "name": "web", "full_name": "hello-world/web", "default_branch": "main", "master_branch": "main",
    "clone_url": "$git_url", "git_url": "$git_url", "html_url": "$git_url", "url": "$git_url"
  },
  "pusher": {"name": "demo", "email": "demo@example.com"},
  "sender": {"login": "demo"},
  "head_commit": {"id": "$sha", "message": "Serve the commit at /version ($ns)", "distinct": true},
  "commits": [{"id": "$sha", "message": "Serve the commit at /version ($ns)", "distinct": true}]
}
PAYLOAD
  branch=refs/heads/main
else
  payload=$fixture
  branch=refs/heads/master
  # An earlier demo on the real node of this control plane cordoned kwok's
  # node and untainted the real one: put both back, so pods land on kwok's.
  kubectl uncordon kwok-node-0 >/dev/null
  if kubectl get node real-node-0 >/dev/null 2>&1; then
    kubectl taint node real-node-0 redeploy.dev/node=real:NoSchedule --overwrite >/dev/null
  fi
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
fi

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
step "POST a GitHub push ($branch, $sha)"
secret=$(kubectl get secret hello-world-webhook-secrets -n "$ns" -o jsonpath='{.data.github}' | base64 -d)
if command -v openssl >/dev/null; then
  hmac=$(openssl dgst -sha256 -hmac "$secret" <"$payload" | awk '{print $NF}')
elif command -v python3 >/dev/null; then
  hmac=$(python3 -c 'import hashlib, hmac, sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2], "rb").read(), hashlib.sha256).hexdigest())' "$secret" "$payload")
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
  --data-binary @"$payload" "$url")
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
if [ -n "$real" ]; then
  job=$(kubectl get rd "$rd" -n "$ns" -o jsonpath='{.status.services[?(@.service=="web")].buildJob}')
  [ -n "$job" ] || die "Redeployment $rd names no build Job for web"
  step "The BuildKit build (kubectl logs job/$job -n $ns, abridged)"
  logs=$(kubectl logs "job/$job" -n "$ns") || die "no logs of build Job $job"
  # The commit resolved, the Dockerfile's RUN step, the push, and the report.
  printf '%s\n' "$logs" | grep -E '^redeploy: building |^#[0-9]+ \[[0-9]+/[0-9]+\] RUN |^#[0-9]+ pushing manifest|^redeploy: pushed ' |
    awk '!seen[$0]++' | sed 's/^/    /'
  printf '%s\n' "$logs" | grep -q '^#[0-9]' || die "build Job $job logged no BuildKit step"
  report=$(kubectl get pods -n "$ns" -l "job-name=$job" \
    -o jsonpath='{.items[*].status.containerStatuses[?(@.name=="build")].state.terminated.message}')
  note "reported: $report"
  digest=$(printf '%s' "$report" | sed -n 's/.*"digest":"\(sha256:[0-9a-f]\{64\}\)".*/\1/p')
  [ -n "$digest" ] || die "build Job $job reported no digest"
  note "digest: $digest"
fi

step "Check Deployment web"
image=$(kubectl get deployment web -n "$ns" -o jsonpath='{.spec.template.spec.containers[?(@.name=="web")].image}')
note "image: $image"
[ "$image" = "$expected_image" ] || die "Deployment web runs $image, not $expected_image"
kubectl rollout status deployment/web -n "$ns" --timeout=60s | sed 's/^/    /'

if [ -n "$real" ]; then
  # A Ready pod of the built digest, reached from here through the route to
  # the node's pod network.
  pods_path='{range .items[*]}{.metadata.name}|{.status.podIP}|{.status.containerStatuses[0].imageID}|{.status.conditions[?(@.type=="Ready")].status}|{.metadata.deletionTimestamp}{"\n"}{end}'
  pod= pod_ip=
  for _ in $(seq 1 120); do
    while IFS='|' read -r name ip image_id ready deleting; do
      if [ -n "$ip" ] && [ "$ready" = True ] && [ -z "$deleting" ] && [ "${image_id##*@}" = "$digest" ]; then
        pod=$name pod_ip=$ip
        break
      fi
    done < <(kubectl get pods -n "$ns" -l app.kubernetes.io/name=web -o jsonpath="$pods_path")
    [ -z "$pod" ] || break
    sleep 1
  done
  [ -n "$pod" ] || die "no Ready pod of Deployment web runs $digest"
  step "GET /version from pod $pod ($pod_ip, on $REAL_NODE)"
  note "curl http://$pod_ip:8080/version"
  version=$(curl -fsS --max-time 5 "http://$pod_ip:8080/version") || die "pod $pod did not answer /version"
  note "$version"
  [ "$version" = "$sha" ] || die "/version answers $version, not the pushed commit $sha"
  note "= the pushed commit"
fi
echo
kubectl get redeploy -n "$ns"

demo_ok=1
step "Demo passed"
note "The operator is stopped; the control plane keeps running. Look around with"
note "  export KUBECONFIG=$KUBECONFIG PATH=\"$bin:\$PATH\""
note "  kubectl get redeploy,deploy,jobs,pods -n $ns"
note "make cluster-down stops it."
