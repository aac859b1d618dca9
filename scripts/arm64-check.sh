#!/usr/bin/env bash
# Checks the arm64 host of the npm release on this x86_64 machine, under qemu-user:
#
#   scripts/arm64-check.sh [PATH/TO/aarch64/paperclip-wasm-host]
#
# Default binary: target/aarch64-unknown-linux-musl/dist/paperclip-wasm-host (what
# `cargo dist --npm DIR` builds; `cargo build --profile dist --target aarch64-unknown-linux-musl
# -p paperclip-wasm-host` builds only it). Checks, in order:
# 1. `file`: an aarch64 ELF, statically linked;
# 2. `qemu-aarch64 HOST --version`: the host version, the embedded component's SHA-256, the WIT
#    package (the same as the build machine's x86_64 host when one is given as HOST_X64);
# 3. `qemu-aarch64 HOST validate`: the component runs (a config is validated);
# 4. the demo's steps, the whole provider lifecycle over the worker protocol against the
#    simulator (`cargo demo --worker W`, W a wrapper that runs HOST under qemu-aarch64): spawn +
#    initialize, validate, probe, acquire, realize, executes, release, 0 VMs left.
#
# Needs: qemu-aarch64 (Debian: qemu-user), file; step 4 builds the dev tools (`cargo demo`).
# Not part of CI: building the arm64 host with the dist profile takes ~10 min of two cores
# (whole-program LTO over wasmtime), which CI's budget has no room for; nothing in the code is
# architecture-specific beyond what the x86_64 tests cover.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=${1:-$ROOT/target/aarch64-unknown-linux-musl/dist/paperclip-wasm-host}
HOST=$(cd "$(dirname "$HOST")" && pwd)/$(basename "$HOST")
START=$(date +%s)
log() { printf '[arm64 %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

for tool in qemu-aarch64 file; do
  command -v "$tool" >/dev/null || die "missing tool: $tool (Debian: apt-get install qemu-user file)"
done
[[ -x $HOST ]] || die "no arm64 host at $HOST (cargo build --profile dist --target aarch64-unknown-linux-musl -p paperclip-wasm-host)"

W=$(mktemp -d /tmp/arm64-check.XXXXXX)
trap 'rm -rf "$W"' EXIT

# 1. static aarch64
FILE=$(file -b "$HOST")
log "file: $FILE"
[[ $FILE == *"ARM aarch64"* ]] || die "not an aarch64 binary"
[[ $FILE == *"statically linked"* || $FILE == *"static-pie linked"* ]] || die "not statically linked"
log "size: $(stat -c %s "$HOST") bytes"

# 2. --version
VERSION=$(qemu-aarch64 "$HOST" --version) || die "--version failed"
log "qemu-aarch64 --version: $(tr '\n' '|' <<<"$VERSION")"
[[ $VERSION == "paperclip-wasm-host "* && $VERSION == *"component sha256:"* && $VERSION == *"wit paperclip:"* ]] ||
  die "unexpected --version output"
if [[ -n ${HOST_X64:-} ]]; then
  [[ $VERSION == "$("$HOST_X64" --version)" ]] || die "--version differs from $HOST_X64's"
  log "--version is the same as $HOST_X64's"
fi

# 3. validate (the component compiled by Cranelift for aarch64 and run, under qemu)
echo '{"apiKey": "arm64-check-token", "namePrefix": "Arm64 Check"}' >"$W/config.json"
OUT=$(qemu-aarch64 "$HOST" validate --config "$W/config.json" --state-dir "$W/state" 2>"$W/validate.err") ||
  die "validate failed: $(cat "$W/validate.err")"
jq -e '.ok == true and .normalizedConfig.namePrefix == "arm64-check"' <<<"$OUT" >/dev/null ||
  die "validate answered: $OUT"
log "qemu-aarch64 validate: ok, namePrefix normalised to $(jq -r .normalizedConfig.namePrefix <<<"$OUT")"

# 4. the demo's lifecycle through the arm64 worker
printf '#!/bin/sh\nexec qemu-aarch64 %q "$@"\n' "$HOST" >"$W/worker"
chmod +x "$W/worker"
log "cargo demo --worker (qemu-aarch64 $HOST)"
(cd "$ROOT" && cargo demo --worker "$W/worker") | tee "$W/demo.log"
grep -q '0 VMs left on the simulator' "$W/demo.log" || die "the demo did not finish"
log "PASS: static aarch64 host; --version, validate and the demo's lifecycle under qemu-aarch64"
