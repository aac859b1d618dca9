// Checks a built plugin folder the way a Paperclip server uses it.
//
//   node check-package.mjs <package-dir> [--manifest-only]
//
// 1. package.json: "type":"module", the package name, paperclipPlugin entrypoints that exist;
//    the host binary in bin/ (a folder) or in this platform's host package (an npm install).
// 2. dist/manifest.js: imported with import() like Paperclip's loadManifestFromPath, then
//    checked against the manifest rules of Paperclip's zod pluginManifestV1Schema that matter for
//    an environment driver (reference/paperclip-host.md §1).
// 3. dist/worker.js: forked like plugin-worker-manager.js does (stdio pipe/pipe/pipe/ipc, a
//    scrubbed env without HOME, an unrelated cwd); `initialize` and `shutdown` are completed
//    through it, every stdout line must be a JSON-RPC 2.0 object, and the process must exit 0.
//    A second launch checks that SIGTERM to the launcher stops the host too; under the spawn
//    fallback a third checks that a SIGKILLed launcher leaves no orphaned host.
//
// Exits 0 when everything holds; otherwise prints the failures to stderr and exits 1.

import { fork } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const pkgDir = path.resolve(process.argv[2] ?? ".");
const manifestOnly = process.argv.includes("--manifest-only");
const failures = [];
const check = (ok, message) => {
  if (!ok) failures.push(message);
  return ok;
};
const nonEmpty = (v) => typeof v === "string" && v.trim().length > 0;

// ---------------------------------------------------------------------------------------------
// package.json

const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
check(pkg.type === "module", 'package.json must have "type":"module"');
check(pkg.name === "@paperclipai/plugin-exe-dev", `package name is ${pkg.name}`);
check(/^\d+\.\d+\.\d+/.test(pkg.version ?? ""), "package.json version must be semver");
const manifestRel = pkg.paperclipPlugin?.manifest;
const workerRel = pkg.paperclipPlugin?.worker;
check(nonEmpty(manifestRel), "paperclipPlugin.manifest is required");
check(nonEmpty(workerRel), "paperclipPlugin.worker is required");
for (const rel of [manifestRel, workerRel]) {
  if (nonEmpty(rel)) check(existsSync(path.join(pkgDir, rel)), `${rel} does not exist`);
}
// The host: the folder's own bin/paperclip-wasm-host, or (the npm package) the binary of this
// platform's host package, an optional dependency pinned to the same version and found by
// Node's module resolution from the package, as the launcher finds it.
let hostBin = path.join(pkgDir, "bin", "paperclip-wasm-host");
if (pkg.optionalDependencies) {
  check(!existsSync(hostBin), "the npm package must not carry a host binary of its own");
  const hosts = Object.keys(pkg.optionalDependencies);
  for (const host of hosts) {
    check(pkg.optionalDependencies[host] === pkg.version, `${host} must be pinned to ${pkg.version}`);
  }
  const hostPkg = `${pkg.name}-${process.platform}-${process.arch}`;
  check(hosts.includes(hostPkg), `no optional dependency on ${hostPkg}`);
  try {
    const resolved = createRequire(path.join(pkgDir, "package.json")).resolve(`${hostPkg}/package.json`);
    hostBin = path.join(path.dirname(resolved), "bin", "paperclip-wasm-host");
    const hostJson = JSON.parse(readFileSync(resolved, "utf8"));
    check(hostJson.version === pkg.version, `${hostPkg} is ${hostJson.version}, not ${pkg.version}`);
  } catch (e) {
    failures.push(`${hostPkg} does not resolve from the package: ${e.message}`);
  }
}
check(existsSync(hostBin), `${hostBin} is missing`);
if (existsSync(hostBin)) {
  check((statSync(hostBin).mode & 0o111) !== 0, `${hostBin} is not executable`);
}
check(existsSync(path.join(pkgDir, "bin", "paperclip_exe_dev.wasm")), "the .wasm is missing");
check(existsSync(path.join(pkgDir, "bin", "manifest.json")), "bin/manifest.json is missing");

// ---------------------------------------------------------------------------------------------
// dist/manifest.js against Paperclip's manifest rules

const mod = await import(pathToFileURL(path.join(pkgDir, manifestRel ?? "dist/manifest.js")).href);
const manifest = mod.default ?? mod;
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

check(/^[a-z0-9][a-z0-9._-]*$/.test(manifest.id ?? ""), `manifest id ${manifest.id} is invalid`);
check(manifest.id === "paperclip.exe-dev-sandbox-provider", "the seed's plugin id must be kept");
check(manifest.apiVersion === 1, "apiVersion must be 1");
check(SEMVER.test(manifest.version ?? ""), "version must be semver");
check(manifest.version === pkg.version, "package.json and manifest versions differ");
for (const key of ["displayName", "description", "author"]) {
  check(nonEmpty(manifest[key]), `${key} must be a non-empty string`);
}
check(
  Array.isArray(manifest.categories) && manifest.categories.length > 0,
  "categories must be a non-empty array",
);
check(
  Array.isArray(manifest.capabilities) &&
    manifest.capabilities.includes("environment.drivers.register"),
  "capabilities must include environment.drivers.register",
);
check(nonEmpty(manifest.entrypoints?.worker), "entrypoints.worker is required");
if (nonEmpty(manifest.entrypoints?.worker)) {
  const resolved = path.resolve(pkgDir, manifest.entrypoints.worker);
  check(
    resolved.startsWith(pkgDir + path.sep) && existsSync(resolved),
    "entrypoints.worker must resolve to a file inside the package",
  );
}
for (const key of Object.keys(manifest)) {
  check(!key.startsWith("x-"), `host-only key ${key} leaked into dist/manifest.js`);
}

const DRIVER_KEYS = new Set([
  "driverKey",
  "kind",
  "displayName",
  "description",
  "configSchema",
  "supportsReusableLeases",
  "supportsLoginPty",
  "sandboxCapabilities",
]);
const drivers = manifest.environmentDrivers;
check(Array.isArray(drivers) && drivers.length > 0, "environmentDrivers must be non-empty");
for (const driver of drivers ?? []) {
  for (const key of Object.keys(driver)) {
    check(DRIVER_KEYS.has(key), `driver entry has unknown key ${key} (the schema is strict)`);
  }
  check(nonEmpty(driver.driverKey), "driverKey is required");
  check(driver.kind === "sandbox_provider", 'kind must be "sandbox_provider"');
  check(
    nonEmpty(driver.displayName) && driver.displayName.length <= 100,
    "driver displayName must be 1..100 characters",
  );
  if ("supportsLoginPty" in driver) {
    check(typeof driver.supportsLoginPty === "boolean", "supportsLoginPty: boolean");
    check(!("supportsSetupTokenLogin" in driver), "only one of supportsLoginPty and its alias");
  }
  if ("supportsReusableLeases" in driver) {
    check(typeof driver.supportsReusableLeases === "boolean", "supportsReusableLeases: boolean");
  }
  const schema = driver.configSchema;
  check(schema && typeof schema === "object", "configSchema must be an object");
  const props = schema?.properties ?? {};
  if (driver.driverKey === "exe-dev") {
    const fields = [
      "apiKey", "apiUrl", "namePrefix", "sourceVm", "image", "command", "cpu", "memory",
      "disk", "comment", "env", "integrations", "tags", "setupScript", "prompt", "timeoutMs",
      "reuseLease", "sshUser", "sshPrivateKey", "sshIdentityFile", "sshPort",
      "strictHostKeyChecking",
    ];
    for (const field of fields) {
      if (!check(field in props, `configSchema lacks ${field}`)) continue;
      check(nonEmpty(props[field].description), `${field} needs a description`);
    }
    for (const secret of ["apiKey", "sshPrivateKey"]) {
      check(props[secret]?.format === "secret-ref", `${secret} must have format secret-ref`);
    }
    check(props.timeoutMs?.default === 300000, "timeoutMs must default to 300000");
    check(props.cpu?.default === 4, "cpu must default to 4");
    check(props.memory?.default === "4GB", 'memory must default to "4GB"');
    check(props.disk?.default === "20GB", 'disk must default to "20GB"');
    check(props.sshPort?.default === 22, "sshPort must default to 22");
    check(props.strictHostKeyChecking?.default === "accept-new", "strictHostKeyChecking default");
    check(props.sshPrivateKey?.maxLength === 8192, "sshPrivateKey.maxLength must be 8192");
  }
}

// ---------------------------------------------------------------------------------------------
// dist/worker.js through fork()

/** Fork the launcher like Paperclip's plugin-worker-manager does. */
function launch() {
  const env = {
    PATH: process.env.PATH,
    NODE_ENV: "production",
    TZ: "UTC",
    PAPERCLIP_PLUGIN_ID: "00000000-0000-4000-8000-000000000000",
    PAPERCLIP_DEPLOYMENT_MODE: "local_trusted",
    PAPERCLIP_DEPLOYMENT_EXPOSURE: "private",
    PAPERCLIP_WASM_HOST_LOG: process.env.PAPERCLIP_WASM_HOST_LOG ?? "info",
  };
  const child = fork(path.join(pkgDir, manifest.entrypoints.worker), [], {
    stdio: ["pipe", "pipe", "pipe", "ipc"],
    execArgv: [],
    env,
    cwd: tmpdir(),
  });
  const lines = [];
  const waiters = new Map();
  let stderr = "";
  child.stderr.on("data", (d) => {
    stderr = (stderr + d.toString()).slice(-8000);
  });
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(line);
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      failures.push(`non-JSON stdout line: ${line.slice(0, 200)}`);
      return;
    }
    if (msg?.jsonrpc !== "2.0") failures.push(`stdout line is not JSON-RPC 2.0: ${line}`);
    if ("id" in msg && waiters.has(msg.id)) {
      waiters.get(msg.id)(msg);
      waiters.delete(msg.id);
    }
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  let nextId = 1;
  const call = (method, params, timeoutMs) =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => reject(new Error(`${method} timed out; stderr: ${stderr}`)), timeoutMs);
      waiters.set(id, (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
      child.stdin.write(JSON.stringify({ jsonrpc: "2.0", id, method, params }) + "\n");
    });
  const stderrTail = () => stderr;
  return { child, call, exited, lines, stderrTail };
}

const withTimeout = (promise, ms, what) => {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
};

/** Direct children of `pid` (empty when the kernel lacks /proc children lists). */
function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Waits up to 5 s for `pid` to be gone (or a zombie awaiting its reaper). */
async function diesSoon(pid) {
  for (let i = 0; i < 50; i++) {
    try {
      if (/\)\s+Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"))) return true;
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

const initializeParams = {
  manifest,
  config: {},
  instanceInfo: { instanceId: "check-package", hostVersion: "2026.916.1" },
  apiVersion: 1,
  databaseNamespace: null,
};

if (!manifestOnly && failures.length === 0) {
  // initialize + shutdown, clean exit 0.
  const w = launch();
  try {
    const init = await w.call("initialize", initializeParams, 15000);
    check(init.result?.ok === true, `initialize did not return ok: ${JSON.stringify(init)}`);
    const methods = init.result?.supportedMethods ?? [];
    for (const m of [
      "environmentValidateConfig", "environmentProbe", "environmentAcquireLease",
      "environmentResumeLease", "environmentReleaseLease", "environmentDestroyLease",
      "environmentRealizeWorkspace", "environmentExecute",
    ]) {
      check(methods.includes(m), `supportedMethods lacks ${m}`);
    }
    const down = await w.call("shutdown", {}, 10000);
    check("result" in down && down.result === null, `shutdown must return null: ${JSON.stringify(down)}`);
    const { code, signal } = await withTimeout(w.exited, 10000, "exit after shutdown");
    check(code === 0, `worker exited with ${code ?? signal} after shutdown; stderr: ${w.stderrTail()}`);
  } catch (e) {
    failures.push(`${e.message}`);
    w.child.kill("SIGKILL");
  }

  // SIGTERM to the launcher stops the host (execve: same process; spawn: forwarded).
  if (failures.length === 0) {
    const t = launch();
    try {
      const init = await t.call("initialize", initializeParams, 15000);
      check(init.result?.ok === true, "second initialize failed");
      const hostPids = childPids(t.child.pid);
      t.child.kill("SIGTERM");
      await withTimeout(t.exited, 10000, "exit after SIGTERM");
      for (const pid of hostPids) {
        check(await diesSoon(pid), `host process ${pid} survived SIGTERM to the launcher`);
      }
    } catch (e) {
      failures.push(`${e.message}`);
      t.child.kill("SIGKILL");
    }
  }

  // SIGKILL to a spawn-fallback launcher: the host is left with stdin EOF (the server destroys
  // its end of the pipe when the child exits) and must exit on it, leaving no orphan.
  if (failures.length === 0 && typeof process.execve !== "function") {
    const k = launch();
    try {
      const init = await k.call("initialize", initializeParams, 15000);
      check(init.result?.ok === true, "third initialize failed");
      const hostPids = childPids(k.child.pid);
      k.child.kill("SIGKILL");
      await withTimeout(k.exited, 10000, "exit after SIGKILL");
      k.child.stdin.destroy();
      for (const pid of hostPids) {
        check(await diesSoon(pid), `host process ${pid} orphaned after the launcher was killed`);
      }
    } catch (e) {
      failures.push(`${e.message}`);
    }
  }
}

if (failures.length > 0) {
  for (const f of failures) console.error(`FAIL: ${f}`);
  process.exit(1);
}
const mode = typeof process.execve === "function" ? "execve" : "spawn fallback";
console.log(`ok: ${pkgDir} (node ${process.version}, launcher path: ${mode})`);
process.exit(0);
