#!/usr/bin/env bash
# Runs an image end to end (deploy/README.md, "What was validated"): the sandbox and `fulfilld
# serve` in two containers of IMAGE on a network of their own, serve on the embedded store in a
# volume and hardened as the Kubernetes manifests run it (read-only root, no capabilities, no
# privilege gain, uid 10001). Publishes an order through the sandbox's admin API, waits for the
# Order to be Activated, checks /livez, /readyz, /health and /metrics (every metric the
# PrometheusRule uses), then stops serve with SIGTERM and expects a clean exit 0 within the
# grace. Removes what it made, unless KEEP=1.
#
#   deploy/smoke.sh [IMAGE]          # default fulfilld:local; CONTAINER_TOOL=podman|docker
#
# Only 127.0.0.1 ports of this machine are called (18480: sandbox admin, 18080: serve).
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-fulfilld:local}
tool=${CONTAINER_TOOL:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}
run_id=fulfilld-smoke-$$
net=$run_id-net
subnet=${SMOKE_SUBNET:-10.213.18.0/24}
sandbox_ip=${subnet%.*}.10
order=801000000000001AAA
admin=http://127.0.0.1:18480
host=http://127.0.0.1:18080

step() { printf '\n== %s\n' "$*"; }
cleanup() {
  [ "${KEEP:-0}" = 1 ] && { echo "KEEP=1: leaving $run_id-* in place"; return; }
  $tool rm -f -t 0 "$run_id-serve" "$run_id-sandbox" >/dev/null 2>&1 || true
  $tool volume rm -f "$run_id-store" "$run_id-sandbox" >/dev/null 2>&1 || true
  $tool network rm -f "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "FAIL: $what within the time allowed" >&2; return 1; }
    sleep 1
  done
  echo "ok: $what"
}

step "network $net ($subnet) and volumes"
$tool network create --subnet "$subnet" "$net" >/dev/null
$tool volume create "$run_id-store" >/dev/null
$tool volume create "$run_id-sandbox" >/dev/null

step "the sandbox on $sandbox_ip (same image, hardened too)"
$tool run -d --name "$run_id-sandbox" --network "$net" --ip "$sandbox_ip" \
  -p 127.0.0.1:18480:8480 --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges -v "$run_id-sandbox:/var/lib/fulfilld" \
  "$image" sandbox --bind "$sandbox_ip" --state-dir /var/lib/fulfilld/sandbox >/dev/null
wait_for 60 "sandbox admin API answers" curl -fsS "$admin/sandbox"
$tool exec "$run_id-sandbox" cat /var/lib/fulfilld/sandbox/sandbox.env | sed 's/^\(WHMCS_SECRET\|WHMCS_IDENTIFIER\)=.*/\1=<hidden>/'

step "fulfilld serve: embedded store in a volume, read-only root, cap-drop ALL, uid $($tool image inspect -f '{{.Config.User}}' "$image")"
# The settings: sandbox.env (read from the sandbox's volume, mounted read-only at the same path
# so its SF_PRIVATE_KEY_PATH holds), then the image's own defaults.
$tool run -d --name "$run_id-serve" --network "$net" -p 127.0.0.1:18080:8080 \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
  -v "$run_id-store:/var/lib/fulfilld" \
  -v "$run_id-sandbox:/run/sandbox:ro" \
  -e FULFILLD_ENV=smoke -e FULFILLD_WORKERS=2 \
  --entrypoint /bin/sh "$image" -c \
  'sed "s#/var/lib/fulfilld/sandbox/#/run/sandbox/sandbox/#" /run/sandbox/sandbox/sandbox.env > /tmp/sandbox.env && set -a && . /tmp/sandbox.env && set +a && exec /usr/bin/fulfilld serve' >/dev/null
wait_for 120 "/livez answers 200" curl -fsS "$host/livez"
wait_for 30 "/readyz answers 200" curl -fsS "$host/readyz"
wait_for 60 "the leader's Pub/Sub subscription started" sh -c "$tool logs $run_id-serve 2>&1 | grep -q 'Pub/Sub subscription started'"

step "publish OrderProvisionRequested__e for $order"
curl -fsS -XPOST "$admin/sandbox/events" -H 'content-type: application/json' -d "{\"order_id\":\"$order\"}"
echo
activated() { curl -fsS "$admin/sandbox/orders/$order" | grep -q '"Activation_Status__c": *"Activated"'; }
wait_for 120 "Order $order is Activated" activated
curl -fsS "$admin/sandbox/orders/$order"; echo
curl -fsS "$admin/sandbox/whmcs/orders"; echo

step "/readyz, /health and /metrics"
curl -fsS "$host/readyz"; echo
curl -fsS "$host/health"; echo
metrics=$(curl -fsS "$host/metrics")
grep -E '^fulfilld_(jobs_total|subscription_leader|subscription_connected|queue_depth|dead_letters) ' <<<"$metrics" || true
grep -E '^fulfilld_jobs_total' <<<"$metrics"
missing=0
for name in $(grep -ohE 'fulfilld_[a-z_]+' deploy/k8s/common/prometheusrule.yaml | sort -u); do
  grep -qE "^$name(\{| )" <<<"$metrics" || { echo "FAIL: /metrics has no $name"; missing=1; }
done
[ $missing = 0 ] && echo "ok: every metric the PrometheusRule uses is on /metrics"
echo "memory: $($tool stats --no-stream --format '{{.MemUsage}}' "$run_id-serve" 2>/dev/null || echo n/a)"

step "SIGTERM: serve stops within its grace and exits 0"
start=$SECONDS
$tool stop -t 45 "$run_id-serve" >/dev/null
code=$($tool inspect -f '{{.State.ExitCode}}' "$run_id-serve")
$tool logs "$run_id-serve" 2>&1 | grep -E 'shutting down|stopped' | tail -3
echo "exit status $code after $((SECONDS - start)) s"
[ "$code" = 0 ] || { echo "FAIL: serve exited $code" >&2; exit 1; }
[ $missing = 0 ] || exit 1
echo
echo "smoke: passed ($image)"
