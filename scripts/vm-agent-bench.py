#!/usr/bin/env python3
"""The VM agent's own cost per run, with no SSH: `vm-agent-bench.py AGENT [RUNS] [SCRIPT]`.

Starts `AGENT serve` (a `paperclip-vm-agent` binary, e.g. the static one the worker embeds:
target/guest/x86_64-unknown-linux-musl/vm-agent/paperclip-vm-agent) with a private HOME, and
sends it RUNS requests (default 300) of `/bin/sh -c SCRIPT` (default `true`), one after
another, each timed until its exit frame (then acknowledged, so its spool goes). Beside each,
the same command is spawned directly and timed. Prints the medians, what the agent adds, and
the agent's own CPU per run (user + system from /proc, in clock ticks of 10 ms, so use a few
hundred runs). Compare two agents by alternating them in one session: the machine's speed
drifts between sessions.
"""
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    agent = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    script = (sys.argv[3] if len(sys.argv) > 3 else "true").encode()
    home = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [agent, "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, HOME=home),
        bufsize=0,
    )

    def read_exact(n):
        b = b""
        while len(b) < n:
            chunk = proc.stdout.read(n - len(b))
            if not chunk:
                raise EOFError("the agent closed its stdout")
            b += chunk
        return b

    # The hello frame: kind u8, len u32, payload.
    _, n = struct.unpack(">BI", read_exact(5))
    read_exact(n)

    def tagged(kind, run, payload):
        return struct.pack(">BQI", kind, run, len(payload)) + payload

    def request(run):
        # paperclip_vm_agent::Header: magic, op, id, offsets, timeout 60 s, cap 1 MiB, lengths.
        header = b"PCA1R" + struct.pack(">QQQQQIQ", run, 0, 0, 60_000, 1 << 20, len(script), 0)
        return tagged(ord("R"), run, header + script)

    def agent_run(run):
        t = time.perf_counter()
        proc.stdin.write(request(run))
        while True:
            kind, _, n = struct.unpack(">BQI", read_exact(13))
            payload = read_exact(n)
            if kind == ord("X"):
                break
            if kind == ord("F"):
                raise RuntimeError(payload.decode(errors="replace"))
        elapsed = time.perf_counter() - t
        proc.stdin.write(tagged(ord("A"), run, b""))
        return elapsed

    def direct_run():
        t = time.perf_counter()
        subprocess.run(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        return time.perf_counter() - t

    def cpu_ms():
        fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 10  # utime + stime, USER_HZ = 100

    for i in range(20):  # warm up
        agent_run(1_000_000 + i)
        direct_run()
    before = cpu_ms()
    through_agent, direct = [], []
    for i in range(runs):
        through_agent.append(agent_run(i + 1))
        direct.append(direct_run())
    spent = cpu_ms() - before
    proc.stdin.close()
    proc.wait()
    a = statistics.median(through_agent) * 1e3
    d = statistics.median(direct) * 1e3
    print(
        f"through the agent {a:.3f} ms, spawned directly {d:.3f} ms, added {a - d:+.3f} ms; "
        f"agent CPU per run {spent / runs:.3f} ms"
    )


if __name__ == "__main__":
    main()
