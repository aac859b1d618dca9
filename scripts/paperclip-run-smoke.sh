#!/usr/bin/env bash
# Real agent runs and login flows of the exe.dev plugin through a REAL paperclipai server
# (issues 20 and 21, item 7), offline after the installs.
#
#   scripts/paperclip-run-smoke.sh [--link] [--duplex off|on|both] [--login | --login-only]
#                                  [--login-shim] [PATH/TO/paperclip-wasm-host [PATH/TO/exe-dev-sim]]
#
# Setup as scripts/paperclip-smoke.sh does (the shared steps are scripts/lib/paperclip-smoke-lib.sh):
# Node 24 and paperclipai from npm into a temp dir, onboard, server on 127.0.0.1:3100, the
# plugin package built by `paperclip-wasm-host package`, installed by path. The simulator runs
# with `--home-template`: every VM starts with the fake CLIs of scripts/fixtures/fake-clis in
# `~/.local/bin` (and a `~/.profile` putting that directory on a login shell's PATH). VM commands
# run on this machine with the simulator's PATH, which has the Node 24 the bridge needs.
#
# Runs (default; `--duplex` picks the modes, default both, off first): for each mode the instance
# setting experimental.enableSandboxDuplexBridge is set (PATCH /api/instance/settings/experimental),
# a `cursor` agent is created in the exe-dev environment (adapterConfig.cwd = a fresh host
# workspace), and a heartbeat run is triggered (POST /api/agents/:id/heartbeat/invoke) and
# waited for (GET /api/heartbeat-runs/:id). The fake `agent` calls GET /api/agents/me through
# the sandbox callback bridge 20 times, timing each call, writes paperclip-run-smoke.json into the
# workspace and prints Cursor's stream-json. Asserted: the run succeeded, the file came back to
# the host workspace with 20 calls, and the bridge mode. With the setting off it must be
# queue_v1. With it on it must be http2_v1 once the plugin declares
# sandboxCapabilities.duplexCommandStream (GET /api/companies/:id/environments/capabilities);
# until then Paperclip falls back to queue_v1, which is reported, not failed
# (REQUIRE_HTTP2=1 makes it fail). Reported per run: the bridge mode the agent saw, any
# fallback line of the run log, the calls' median and p90 latency, the run's duration and the
# number of commands the worker ran on the run's VM.
#
# --link: the simulator's link model on its SSH path (LINK_RTT_MS, default 30, LINK_MBIT,
# default 100) instead of plain loopback.
#
# --login (after the runs) / --login-only (no runs): the login flows of reference
# paperclip-interactive.md §A.8, with the fake claude, codex and grok: Claude setup-token
# (start, read the prompt URL, post a code, wait for `authenticated`, the token stored as the
# owner's secret: GET /api/companies/:id/claude-oauth-token-status), a Codex device login whose
# code must be displayed and that is cancelled midway (its VM must go), a Codex and a Grok
# device login through to `authenticated`, and a Claude session cancelled while it waits for
# the code (its VM must go). The fake Claude token (derived from the posted code) must appear
# in no log or answer. These need the plugin's loginPty* (manifest supportsLoginPty): until it
# has them the login phase fails at its first step and says so.
#
# --login-shim (test-only): proves the login phase itself before the worker has loginPty*. The
# package copy in the workdir gets scripts/fixtures/login-pty-shim.mjs as its dist/worker.js
# (it relays everything to the real launcher and answers loginPty* itself over ssh -tt into the
# VM) and `supportsLoginPty: true` in its manifest. A pass with it says nothing about the worker.
#
# Closing checks, as the other smoke: 0 VMs in the simulator, every lease released with
# cleanupStatus success, no secret (exe.dev token, SSH key, the server's JWT secret, the fake
# Claude token) in the server log, the run logs or any API answer, no worker left after the
# server stops, no login session home left in /tmp/paperclip-adapter-login.
#
# Needs: bash, curl, jq, npm, tar, ssh, setsid; ports 3100 and 54329 free. Knobs as the other
# smoke (PAPERCLIP_VERSION, NODE_PKG, KEEP_WORKDIR=1, SMOKE_WORKDIR) plus RUN_TIMEOUT_S (300),
# FAKE_AGENT_CALLS (20), CODEX_WAIT_S (15: how long the fake codex/grok wait before signing in),
# REQUIRE_HTTP2 (auto).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SMOKE_NAME=run-smoke
# shellcheck source=scripts/lib/paperclip-smoke-lib.sh
source "$SCRIPT_DIR/lib/paperclip-smoke-lib.sh"

LINK=0 DUPLEX=both LOGIN=0 RUNS=1 LOGIN_SHIM=0
usage() { sed -n '5,6p' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --link) LINK=1 ;;
    --duplex) [[ ${2:-} =~ ^(off|on|both)$ ]] || usage; DUPLEX=$2; shift ;;
    --login) LOGIN=1 ;;
    --login-only) LOGIN=1 RUNS=0 ;;
    --login-shim) LOGIN_SHIM=1 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
  shift
done
HOST_BIN=${1:-$SCRIPT_DIR/../target/release/paperclip-wasm-host}
HOST_BIN=$(cd "$(dirname "$HOST_BIN")" && pwd)/$(basename "$HOST_BIN")
SIM_BIN=${2:-$(dirname "$HOST_BIN")/exe-dev-sim}
SIM_BIN=$(cd "$(dirname "$SIM_BIN")" && pwd)/$(basename "$SIM_BIN")
FAKES=$SCRIPT_DIR/fixtures/fake-clis
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-300}
FAKE_AGENT_CALLS=${FAKE_AGENT_CALLS:-20}
CODEX_WAIT_S=${CODEX_WAIT_S:-15}
REQUIRE_HTTP2=${REQUIRE_HTTP2:-auto}
LINK_RTT_MS=${LINK_RTT_MS:-30}
LINK_MBIT=${LINK_MBIT:-100}
LOGIN_HOMES=/tmp/paperclip-adapter-login

smoke_need_tools curl jq npm tar ssh setsid sha256sum python3
[[ -x $HOST_BIN ]] || die "host binary not found or not executable: $HOST_BIN"
[[ -x $SIM_BIN ]] || die "simulator binary not found or not executable: $SIM_BIN"
for f in agent claude codex grok; do [[ -x $FAKES/$f ]] || die "fake CLI missing: $FAKES/$f"; done
smoke_need_ports 3100 54329

smoke_workdir paperclip-run-smoke
LINK_DESC=loopback
SIM_FLAGS=(--home-template "$W/vm-home")
if [[ $LINK == 1 ]]; then
  LINK_DESC="link ${LINK_RTT_MS} ms / ${LINK_MBIT} Mbit/s"
  SIM_FLAGS+=(--link-rtt-ms "$LINK_RTT_MS" --link-mbit "$LINK_MBIT")
fi
log "workdir $W, host binary $HOST_BIN (sha256 $(sha256sum "$HOST_BIN" | cut -c1-16), $(date -r "$HOST_BIN" -u +%FT%TZ)), simulator $SIM_BIN, $LINK_DESC"

# Login session homes this run creates on the "VMs" (this machine's /tmp): removed at the end.
mkdir -p "$W/login"
find "$LOGIN_HOMES" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort >"$W/login/homes-before" || true
LOGIN_ROOT_EXISTED=0
[[ -d $LOGIN_HOMES ]] && LOGIN_ROOT_EXISTED=1
remove_new_login_homes() {
  local d
  [[ -d $LOGIN_HOMES ]] || return 0
  while IFS= read -r d; do
    if [[ $d =~ ^[0-9a-f-]{36}$ ]]; then rm -rf -- "${LOGIN_HOMES:?}/$d"; fi
  done < <(find "$LOGIN_HOMES" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | comm -13 "$W/login/homes-before" -)
  if [[ $LOGIN_ROOT_EXISTED == 0 ]]; then rmdir "$LOGIN_HOMES" 2>/dev/null || true; fi
}
SMOKE_CLEANUP_HOOKS+=(remove_new_login_homes)

# --- setup ----------------------------------------------------------------------------------------
smoke_install_paperclip
smoke_onboard

# The fakes against Paperclip's own parsers and checks, standalone (a PTY and plain pipes), so a
# broken fake is never mistaken for a plugin failure.
log "checking the fake CLIs against the installed parsers"
node "$SCRIPT_DIR/fixtures/check-fake-clis.mjs" "$W/app" >"$W/check-fake-clis.log" 2>&1 ||
  die "the fake CLIs fail Paperclip's parsers: $(grep -a FAIL "$W/check-fake-clis.log" | head -5) (see $W/check-fake-clis.log)"
log "fake CLIs: $(grep -c '^ok' "$W/check-fake-clis.log") checks passed"

# The VMs' home template: the fake CLIs in ~/.local/bin, on a login shell's PATH.
mkdir -p "$W/vm-home/.local/bin" "$W/vm-home/.config/fake-clis"
cp "$FAKES"/{agent,claude,codex,grok} "$W/vm-home/.local/bin/"
chmod 0755 "$W/vm-home/.local/bin/"*
# Paperclip's bridge (and the fake agent) run `node` from the VM's PATH, which a login shell
# resets (/etc/profile): the Node 24 installed above goes into ~/.local/bin, which both a login
# shell (~/.profile) and the cursor adapter put first, as a VM image with Node 24 would have it.
ln -s "$W/node/package/bin/node" "$W/vm-home/.local/bin/node"
# shellcheck disable=SC2016 # expanded by the VM's login shell
printf '# paperclip-run-smoke: the fake CLIs\nPATH="$HOME/.local/bin:$PATH"\nexport PATH\n' >"$W/vm-home/.profile"
echo "$CODEX_WAIT_S" >"$W/vm-home/.config/fake-clis/codex-wait-seconds"
echo "$CODEX_WAIT_S" >"$W/vm-home/.config/fake-clis/grok-wait-seconds"

smoke_start_sim "$SIM_BIN" "${SIM_FLAGS[@]}"
smoke_package_plugin "$HOST_BIN"
if [[ $LOGIN_SHIM == 1 ]]; then
  log "TEST-ONLY: the package copy gets the login PTY shim (scripts/fixtures/login-pty-shim.mjs) and supportsLoginPty"
  mv "$PLUGIN/dist/worker.js" "$PLUGIN/dist/worker-real.js"
  cp "$SCRIPT_DIR/fixtures/login-pty-shim.mjs" "$PLUGIN/dist/worker.js"
  jq -n --arg c "$SSH_CONFIG" --arg k "$SSH_KEY" --arg h "$W/shim-known-hosts" \
    '{sshConfig: $c, sshKey: $k, knownHosts: $h}' >"$PLUGIN/dist/login-pty-shim.json"
  # shellcheck disable=SC2016 # JavaScript, not shell
  node --input-type=module -e '
    import { writeFileSync } from "node:fs";
    const m = (await import(process.argv[1])).default;
    for (const d of m.environmentDrivers) if (d.driverKey === "exe-dev") d.supportsLoginPty = true;
    writeFileSync(new URL(process.argv[1]), `export default ${JSON.stringify(m, null, 2)};\n`);' "file://$PLUGIN/dist/manifest.js"
fi
smoke_start_server
smoke_install_plugin_by_path
smoke_create_company "Run Smoke Co"
smoke_create_environment "exe-dev run smoke"

call capabilities GET "/companies/$CID/environments/capabilities"
expect capabilities 200 '.sandboxProviders["exe-dev"] != null' "no exe-dev sandbox provider in the capabilities"
CAPS=$(jq -c '.sandboxProviders["exe-dev"]' "$W/r_capabilities.json")
log "capabilities of exe-dev: $(head -c 600 <<<"$CAPS")"
# The manifest's gates, read from the package the server loaded (its dist/manifest.js).
manifest_gate() { # jq filter on the exe-dev driver entry
  # shellcheck disable=SC2016 # JavaScript, not shell
  node --input-type=module -e '
    const m = (await import(process.argv[1])).default;
    const d = (m.environmentDrivers ?? []).find((x) => x.driverKey === "exe-dev") ?? {};
    process.stdout.write(JSON.stringify(d));' "file://$PLUGIN/dist/manifest.js" | jq -r "$1"
}
MANIFEST_DUPLEX=$(manifest_gate '.sandboxCapabilities.duplexCommandStream == true') ||
  die "could not read $PLUGIN/dist/manifest.js"
MANIFEST_LOGIN=$(manifest_gate '(.supportsLoginPty // .supportsSetupTokenLogin) == true') ||
  die "could not read $PLUGIN/dist/manifest.js"
CAPS_LOGIN=$(jq -r '.supportsLoginPty // false' <<<"$CAPS")
log "manifest: duplexCommandStream=$MANIFEST_DUPLEX, supportsLoginPty=$MANIFEST_LOGIN; server capabilities: supportsLoginPty=$CAPS_LOGIN"

# --- runs ------------------------------------------------------------------------------------------
RESULTS=()
vm_commands() { # vm: how many commands the worker finished on it (its "ssh exec finished" lines)
  grep -ac "ssh exec finished host=$1\\.exe\\.xyz" "$W/server.log" || true
}
run_vms() { # file: the VMs the worker has run commands on so far, one per line, sorted
  { grep -ao 'ssh exec finished host=[a-z0-9-]*\.exe\.xyz' "$W/server.log" || true; } |
    sed 's/.*host=//; s/\.exe\.xyz$//' | sort -u >"$1"
}
run_mode() { # off|on
  local mode=$1 want=false name status i run_id vm ws file bridge fallback median p90 mn mx dur cmds expect_mode
  [[ $mode == on ]] && want=true
  jq -n --argjson v "$want" '{enableSandboxDuplexBridge: $v}' >"$W/b_duplex_$mode.json"
  call "duplex_$mode" PATCH /instance/settings/experimental "$W/b_duplex_$mode.json"
  [[ $STATUS == 200 ]] || die "duplex_$mode: HTTP $STATUS: $(head -c 1000 "$W/r_duplex_$mode.json")"
  call "duplex_${mode}_read" GET /instance/settings/experimental
  expect "duplex_${mode}_read" 200 ".enableSandboxDuplexBridge == $want" "the setting did not read back as $want"

  ws=$W/workspace-$mode
  mkdir -p "$ws"
  name="run-smoke-$mode"
  jq -n --arg n "$name" --arg e "$EID" --arg cwd "$ws" \
    '{name: $n, adapterType: "cursor", defaultEnvironmentId: $e,
      adapterConfig: {cwd: $cwd, timeoutSec: 600, graceSec: 5}}' >"$W/b_agent_$mode.json"
  call "agent_$mode" POST "/companies/$CID/agents" "$W/b_agent_$mode.json"
  expect "agent_$mode" 201 '.id | length > 0' "agent not created"
  local aid
  aid=$(jq -r .id "$W/r_agent_$mode.json")

  echo '{}' >"$W/b_invoke.json"
  call "invoke_$mode" POST "/agents/$aid/heartbeat/invoke" "$W/b_invoke.json"
  expect "invoke_$mode" 202 '.id | length > 0' "no heartbeat run started"
  run_id=$(jq -r .id "$W/r_invoke_$mode.json")
  log "run $mode: heartbeat run $run_id (agent $aid), waiting up to ${RUN_TIMEOUT_S}s"
  for ((i = 0; i < RUN_TIMEOUT_S; i++)); do
    quiet_call "run_$mode" GET "/heartbeat-runs/$run_id"
    status=$(jq -r '.status // empty' "$W/r_run_$mode.json" 2>/dev/null || true)
    [[ $status =~ ^(succeeded|failed|cancelled|timed_out|interrupted)$ ]] && break
    sleep 1
  done
  SUMMARY+=("$(printf '%-22s %s' "run_$mode" "${status:-?}")")
  quiet_call "runlog_$mode" GET "/heartbeat-runs/$run_id/log?limitBytes=4000000"
  jq -r '.content // empty' "$W/r_runlog_$mode.json" >"$W/run-$mode.log" 2>/dev/null || true
  quiet_call "events_$mode" GET "/heartbeat-runs/$run_id/events?limit=1000"
  [[ $status == succeeded ]] ||
    die "run $mode: status '${status:-none}' after ${i}s (error: $(jq -c '{error, errorCode, exitCode}' "$W/r_run_$mode.json" 2>/dev/null | head -c 600)); run log: $W/run-$mode.log; tail: $(tail -c 1500 "$W/run-$mode.log")"

  file=$ws/paperclip-run-smoke.json
  [[ -f $file ]] || die "run $mode: succeeded, but $file did not come back to the host workspace (files: $(find "$ws" -maxdepth 2 | head -20 | tr '\n' ' '))"
  jq -e --argjson n "$FAKE_AGENT_CALLS" '.calls == $n and (.latenciesMs | length) == $n and (.agentId | length) > 0' "$file" >/dev/null ||
    die "run $mode: $file does not hold $FAKE_AGENT_CALLS calls: $(head -c 800 "$file")"
  jq -e --arg a "$aid" '.agentId == $a' "$file" >/dev/null || die "run $mode: /api/agents/me named another agent: $(jq -c .agentId "$file")"
  jq -e '.node | ltrimstr("v") | split(".")[0] | tonumber >= 24' "$file" >/dev/null ||
    die "run $mode: the VM's node is $(jq -r .node "$file"), Paperclip's bridge needs >= 24.11 (the fixture's ~/.local/bin/node was not on PATH)"
  bridge=$(jq -r .bridgeMode "$file")
  median=$(jq -r .medianMs "$file") p90=$(jq -r .p90Ms "$file") mn=$(jq -r .minMs "$file") mx=$(jq -r .maxMs "$file")
  fallback=$(grep -aoE '\[paperclip\] (Could not open the sandbox duplex channel \([a-z_]+\)|Sandbox duplex readiness failed \([a-z_]+\)|Sandbox HTTP/2 client preface did not appear[^.]*\([a-z_]+\))' "$W/run-$mode.log" | head -1 || true)
  dur=$(jq -r 'if .startedAt and .finishedAt then (((.finishedAt | sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601) - (.startedAt | sub("\\.[0-9]+Z$"; "Z") | fromdateiso8601)) | tostring) + " s" else "?" end' "$W/r_run_$mode.json" 2>/dev/null || echo '?')
  # The run's VM: the one VM the worker ran commands on that it had not before this run.
  run_vms "$W/vms-after-$mode"
  vm=$(comm -13 "$W/vms-before-$mode" "$W/vms-after-$mode" | head -1)
  cmds=$( [[ -n $vm ]] && vm_commands "$vm" || echo '?')

  if [[ $mode == off ]]; then
    expect_mode=queue_v1
  elif [[ $REQUIRE_HTTP2 == 1 || ($REQUIRE_HTTP2 == auto && $MANIFEST_DUPLEX == true) ]]; then
    expect_mode=http2_v1
  else
    expect_mode=queue_v1
  fi
  local note=""
  if [[ $mode == on && $expect_mode == queue_v1 ]]; then
    note=" (NOTE: duplex requested, but the plugin does not declare sandboxCapabilities.duplexCommandStream: Paperclip used the file bridge, as expected until issue 20 lands)"
  fi
  [[ $bridge == "$expect_mode" ]] ||
    die "run $mode: the agent saw PAPERCLIP_API_BRIDGE_MODE=$bridge, expected $expect_mode${fallback:+; run log: $fallback}"
  log "run $mode: succeeded in $dur; bridge $bridge${fallback:+ ($fallback)}; $FAKE_AGENT_CALLS x GET /api/agents/me: median $median ms, p90 $p90 ms (min $mn, max $mx); $cmds commands on VM ${vm:-?}$note"
  RESULTS+=("$(printf 'duplex %-3s -> %-8s median %7s ms  p90 %7s ms  (min %s, max %s)  run %s, %s commands on the VM%s' \
    "$mode" "$bridge" "$median" "$p90" "$mn" "$mx" "$dur" "$cmds" "${fallback:+; $fallback}")")
}

if [[ $RUNS == 1 ]]; then
  MODES=(off on)
  [[ $DUPLEX == off ]] && MODES=(off)
  [[ $DUPLEX == on ]] && MODES=(on)
  for m in "${MODES[@]}"; do
    run_vms "$W/vms-before-$m"
    run_mode "$m"
  done
fi

# --- login flows ------------------------------------------------------------------------------------
LOGIN_RESULTS=()
CLAUDE_TOKENS=()
wait_no_vms() { # what: polls the simulator until it has no VM (20 s)
  local i n vms
  for ((i = 0; i < 40; i++)); do
    vms=$(sim_vms) || die "simulator ls failed"
    n=$(jq '.vms | length' <<<"$vms")
    [[ $n == 0 ]] && return 0
    sleep 0.5
  done
  die "$1: the session's VM was not deleted within 20 s: $vms"
}
login_unsupported_note() {
  if [[ $CAPS_LOGIN != true ]]; then
    echo " (expected until issue 21 lands: the exe-dev driver does not declare supportsLoginPty, so the server refuses login sessions for this environment)"
  fi
}
claude_start() { # name: starts a setup-token session, sets SID
  jq -n --arg e "$EID" '{environmentId: $e, adapterType: "claude_local"}' >"$W/b_$1.json"
  call "$1" POST "/companies/$CID/setup-token-login-sessions" "$W/b_$1.json"
  [[ $STATUS == 201 ]] ||
    die "$1: starting a Claude setup-token session: HTTP $STATUS $(head -c 600 "$W/r_$1.json")$(login_unsupported_note)"
  SID=$(jq -r .sessionId "$W/r_$1.json")
}
claude_wait_prompt() { # name: polls /prompt (60 s), sets URL
  local i
  for ((i = 0; i < 120; i++)); do
    quiet_call "$1_prompt" GET "/companies/$CID/setup-token-login-sessions/$SID/prompt"
    [[ $STATUS == 200 ]] && break
    quiet_call "$1_status" GET "/companies/$CID/setup-token-login-sessions/$SID"
    if jq -e '.status | test("failed|timed_out|cancelled")' "$W/r_$1_status.json" >/dev/null 2>&1; then
      die "$1: the session ended before its prompt was parsed: $(head -c 600 "$W/r_$1_status.json") (the PTY's output never matched the parser, or the open failed: see loginPty lines in $W/server.log)"
    fi
    sleep 0.5
  done
  [[ $STATUS == 200 ]] || die "$1: no prompt URL after 60 s: $(head -c 600 "$W/r_$1_status.json")"
  URL=$(jq -r .authorizationUrl "$W/r_$1_prompt.json")
  [[ $URL == https://claude.ai/oauth/authorize\?* ]] || die "$1: unexpected authorization URL: ${URL:0:200}"
}
device_start() { # name type: starts a device login, sets SID
  jq -n --arg e "$EID" '{environmentId: $e}' >"$W/b_$1.json"
  call "$1" POST "/companies/$CID/adapters/$2/login-sessions" "$W/b_$1.json"
  [[ $STATUS == 201 ]] ||
    die "$1: starting a $2 device login: HTTP $STATUS $(head -c 600 "$W/r_$1.json")$(login_unsupported_note)"
  SID=$(jq -r .sessionId "$W/r_$1.json")
}
device_wait() { # name type jq-condition seconds: polls the session until the condition holds
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    quiet_call "$1_status" GET "/companies/$CID/adapters/$2/login-sessions/$SID"
    jq -e "$3" "$W/r_$1_status.json" >/dev/null 2>&1 && return 0
    if jq -e '.status | test("failed|timed_out|cancelled|released")' "$W/r_$1_status.json" >/dev/null 2>&1; then
      die "$1: the session ended early: $(head -c 600 "$W/r_$1_status.json")"
    fi
    sleep 0.5
  done
  die "$1: '$3' not reached in $4 s: $(head -c 600 "$W/r_$1_status.json")"
}

if [[ $LOGIN == 1 ]]; then
  log "login flows (manifest supportsLoginPty=$MANIFEST_LOGIN)"
  # 1. Claude setup-token through to `authenticated`, the token stored.
  T0=$(date +%s)
  claude_start claude_login
  claude_wait_prompt claude_login
  CODE="fakecode-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)"
  CLAUDE_TOKENS+=("sk-ant-oat01-$(printf 'fake-claude-setup-token:%s' "$CODE" | sha256sum | cut -c1-64)")
  jq -n --arg c "$CODE" '{browserCode: $c}' >"$W/login/b_code.json"
  call claude_code POST "/companies/$CID/setup-token-login-sessions/$SID/code" "$W/login/b_code.json"
  rm -f "$W/login/b_code.json"
  [[ $STATUS == 200 ]] || die "claude_code: HTTP $STATUS $(head -c 600 "$W/r_claude_code.json")"
  for ((i = 0; i < 120; i++)); do
    quiet_call claude_login_status GET "/companies/$CID/setup-token-login-sessions/$SID"
    jq -e '.status | test("authenticated|failed|timed_out|cancelled")' "$W/r_claude_login_status.json" >/dev/null 2>&1 && break
    sleep 0.5
  done
  jq -e '.status == "authenticated"' "$W/r_claude_login_status.json" >/dev/null ||
    die "claude_login: not authenticated after the code: $(head -c 600 "$W/r_claude_login_status.json")"
  call claude_token_status GET "/companies/$CID/claude-oauth-token-status"
  expect claude_token_status 200 '(.secretId // .id // "") | length > 0' "no stored Claude token secret"
  wait_no_vms claude_login
  LOGIN_RESULTS+=("claude setup-token: prompt URL parsed, code posted, authenticated in $(($(date +%s) - T0)) s, token stored as secret $(jq -r '.secretId // .id' "$W/r_claude_token_status.json"), VM gone")

  # 2. Codex device login: the code displayed, then cancelled midway; its VM goes.
  T0=$(date +%s)
  device_start codex_cancel codex_local
  device_wait codex_cancel codex_local '.prompt.code != null and (.prompt.code | test("^[A-Z0-9]{4}-[A-Z0-9]{5}$")) and .prompt.url == "https://auth.openai.com/codex/device"' 60
  CODEX_CODE=$(jq -r .prompt.code "$W/r_codex_cancel_status.json")
  echo '{}' >"$W/b_empty.json"
  call codex_cancel_post POST "/companies/$CID/adapters/codex_local/login-sessions/$SID/cancel" "$W/b_empty.json"
  [[ $STATUS == 200 || $STATUS == 202 || $STATUS == 204 ]] || die "codex_cancel_post: HTTP $STATUS $(head -c 600 "$W/r_codex_cancel_post.json")"
  wait_no_vms codex_cancel
  quiet_call codex_cancel_final GET "/companies/$CID/adapters/codex_local/login-sessions/$SID"
  LOGIN_RESULTS+=("codex device login: code $CODEX_CODE displayed, cancelled midway, VM gone in $(($(date +%s) - T0)) s (final: $(jq -c '{status, failure}' "$W/r_codex_cancel_final.json" 2>/dev/null | head -c 200))")

  # 3. Codex and Grok device logins through to `authenticated`.
  for kind in codex grok; do
    T0=$(date +%s)
    device_start "${kind}_login" "${kind}_local"
    device_wait "${kind}_login" "${kind}_local" '.prompt.code != null' 60
    shown=$(jq -r .prompt.code "$W/r_${kind}_login_status.json")
    device_wait "${kind}_login" "${kind}_local" '.status == "authenticated"' $((CODEX_WAIT_S + 60))
    wait_no_vms "${kind}_login"
    LOGIN_RESULTS+=("$kind device login: code $shown displayed, authenticated in $(($(date +%s) - T0)) s (the fake signed in after ${CODEX_WAIT_S} s), VM gone")
  done

  # 4. Claude cancelled while it waits for the code.
  T0=$(date +%s)
  claude_start claude_cancel
  claude_wait_prompt claude_cancel
  call claude_cancel_post POST "/companies/$CID/setup-token-login-sessions/$SID/cancel" "$W/b_empty.json"
  [[ $STATUS == 200 ]] || die "claude_cancel_post: HTTP $STATUS $(head -c 600 "$W/r_claude_cancel_post.json")"
  wait_no_vms claude_cancel
  LOGIN_RESULTS+=("claude setup-token: cancelled at the code prompt, VM gone in $(($(date +%s) - T0)) s")
fi

# --- closing checks ---------------------------------------------------------------------------------------
call leases GET "/environments/$EID/leases"
expect leases 200 'all(.[]; .releasedAt != null and .cleanupStatus == "success")' "a lease was not released cleanly"
log "leases: $(jq -c '[.[] | {status, cleanupStatus}] | group_by(.cleanupStatus) | map({(.[0].cleanupStatus): length}) | add' "$W/r_leases.json")"
smoke_check_no_vms
SMOKE_LEAK_FILES="$(printf '%s ' "$W"/run-*.log)"
smoke_leak_check "${CLAUDE_TOKENS[@]}"
smoke_stop_server
remove_new_login_homes
left=$({ find "$LOGIN_HOMES" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null || true; } | sort | comm -13 "$W/login/homes-before" - | wc -l)
[[ $left == 0 ]] || die "$left login session homes left in $LOGIN_HOMES"

OK=1
printf '\npaperclip run smoke (%s): PASS in %ss (paperclipai %s, %s)\n' "$LINK_DESC" "$(($(date +%s) - START))" "$PAPERCLIP_VERSION" "$NODE_PKG"
printf '  %s\n' "${SUMMARY[@]}"
if [[ ${#RESULTS[@]} -gt 0 ]]; then printf '  %s\n' "${RESULTS[@]}"; fi
if [[ ${#LOGIN_RESULTS[@]} -gt 0 ]]; then printf '  %s\n' "${LOGIN_RESULTS[@]}"; fi
printf '  VMs left 0; leases all cleaned; secret hits 0\n'
