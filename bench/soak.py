"""Soak: tapswitch under mixed traffic, reloads and worker kills for a while; is anything drifting?

    python bench/soak.py --seconds 600          # the 10-minute soak (root)
    python bench/soak.py --seconds 60 --json out.json

Four hosts (namespaces `skXXXXc0`..`c3`, 198.18.9.1-4/24, IPv6 off) on a two-queue switch. For the
whole run:
  - ping c0 -> c1 and c3 -> c2 every 0.1 s;
  - iperf3 TCP c2 -> c3, 5-second runs back to back (paced, --bitrate, 1 Gbit/s by default);
  - a burst of 500 broadcast frames from c1 every 3 s;
  - SIGHUP every 4 s, the config alternately with and without a fifth port (c4);
  - SIGKILL to a random worker every 10 s (the first after 5 s), whenever it falls -- also during
    a reload, unless --kills-between-reloads.
Every second: the PSS of the switch (control process + workers, /proc/PID/smaps_rollup) and every
port's counters (`tapswitch ports --json`).

Checks (exit 1 if any fails, 0 if all pass; 2 if the soak could not run):
  - PSS flat: the mean of the last 5 samples within --pss-mb (4) of the mean of the first 5
    (taken after a 5 s warm-up);
  - no ping lost outside the kill windows (from 0.5 s before a kill to 2 s after it), and each
    killed worker replaced within 1 s;
  - counters consistent: no counter of a permanent port ever went backwards, and each pinging
    port received at least as many frames as its ping sent;
  - every reload applied (config.reloaded, none failed) and the switch still running at the end.
Everything made (namespaces, switch, processes, a temporary directory) is removed at the end,
also on failure, SIGTERM or Ctrl-C.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import Lab, nsexec, sh, start_tapswitch  # noqa: E402  (the bench's own helpers)

SUBNET = "198.18.9"
KILL_BEFORE, KILL_AFTER = 0.5, 2.0       # the kill window around each SIGKILL, seconds
ETH_TYPE = 0x88B5


def burst(dev: str, count: int) -> None:
    """(Run inside a namespace.) `count` broadcast frames on dev, paced."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    src = open(f"/sys/class/net/{dev}/address").read().strip()
    frame = b"\xff" * 6 + bytes.fromhex(src.replace(":", "")) + ETH_TYPE.to_bytes(2, "big") + bytes(46)
    for i in range(count):
        s.send(frame)
        if i % 64 == 63:
            time.sleep(0.002)


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return int(re.search(r"^Pss:\s+(\d+) kB", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return 0


class Soak:
    def __init__(self, args):
        self.args = args
        self.lab = Lab("sk" + uuid.uuid4().hex[:4])    # names, namespaces, processes, temp dir
        self.tag, self.dir, self.procs = self.lab.tag, self.lab.dir, self.lab.procs
        self.switch: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.t0 = 0.0
        self.kills: list[dict] = []        # {t, pid, replaced_in}
        self.reloads = 0
        self.bursts = 0
        self.iperf_runs: list[float] = []  # Gbit/s of each finished run
        self.pss: list[tuple[float, int]] = []
        self.counters: list[tuple[float, dict]] = []
        self.backwards: list[str] = []
        self.errors: list[str] = []

    # --- setup and teardown ----------------------------------------------------

    def config(self, extra: bool) -> dict:
        n = 5 if extra else 4
        ports = [{"name": self.lab.name(f"p{i}"), "netns": f"/run/netns/{self.hosts[i]}", "ifname": "eth0",
                  "addresses": [f"{SUBNET}.{i + 1}/24"]} for i in range(n)]
        return {"switch": {"name": self.lab.name("sw"), "queues": 2,
                           "control": {"socket": os.path.join(self.dir, "ctl.sock")},
                           "metrics": {"listen": ""}, "log": {"level": "info", "format": "json"}},
                "ports": ports}

    def write_config(self, extra: bool) -> None:
        tmp = self.config_path + ".new"
        with open(tmp, "w") as f:
            yaml.safe_dump(self.config(extra), f)
        os.replace(tmp, self.config_path)

    def start(self) -> None:
        self.hosts = [self.lab.netns(f"c{i}") for i in range(5)]
        self.config_path = os.path.join(self.dir, "tapswitch.yaml")
        self.socket = os.path.join(self.dir, "ctl.sock")
        self.write_config(False)
        self.log_path = os.path.join(self.dir, "switch.log")
        self.switch, _ = start_tapswitch(self.config_path, self.log_path, self.dir)
        for i in (0, 1, 2, 3):      # ARP everywhere before the clock starts
            for j in (0, 1, 2, 3):
                if i != j:
                    nsexec(self.hosts[i], "ping", "-c", "1", "-W", "2", f"{SUBNET}.{j + 1}", check=False)

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.switch is not None and self.switch.poll() is None:
            self.switch.terminate()
            try:
                self.switch.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.switch.kill()
                self.switch.wait()
        if self.args.keep_log:
            os.makedirs(os.path.dirname(os.path.abspath(self.args.keep_log)) or ".", exist_ok=True)
            try:
                with open(self.log_path) as src, open(self.args.keep_log, "w") as dst:
                    dst.write(src.read())
            except OSError:
                pass
        self.lab.close()          # the processes left, the namespaces, the temp dir

    # --- reading the switch --------------------------------------------------

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == name:
                out.append(e)
        return out

    def workers(self) -> list[int]:
        out = sh("pgrep", "-P", self.switch.pid, "-f", "tapswitch.worker", check=False).stdout
        return [int(p) for p in out.split()]

    def ports(self) -> dict:
        r = sh(sys.executable, "-m", "tapswitch", "ports", "--json", "-s", self.socket, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"tapswitch ports: {r.stderr.strip()}")
        return {p["name"]: p["counters"] for p in json.loads(r.stdout)}

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- the loads ------------------------------------------------------------

    def popen(self, argv, **kw) -> subprocess.Popen:
        p = subprocess.Popen([str(a) for a in argv], **kw)
        self.procs.append(p)
        return p

    def ping(self, src: int, dst: int) -> subprocess.Popen:
        # -D: a wall-clock stamp on each line; -O: a line for each request not answered in time.
        # Into a file, not a pipe: a pipe nobody reads fills up after ~800 lines and stops the ping.
        out = open(os.path.join(self.dir, f"ping-{src}-{dst}.txt"), "w")
        p = self.popen(["ip", "netns", "exec", self.hosts[src], "ping", "-n", "-D", "-O", "-i", "0.1",
                        "-W", "1", f"{SUBNET}.{dst + 1}"], stdout=out, stderr=subprocess.STDOUT)
        p.out_path = out.name
        out.close()
        return p

    def iperf_loop(self) -> None:
        server = self.popen(["ip", "netns", "exec", self.hosts[3], "iperf3", "-s", "-B", f"{SUBNET}.4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        while not self.stop.is_set():
            p = self.popen(["ip", "netns", "exec", self.hosts[2], "iperf3", "-c", f"{SUBNET}.4", "-t", "5",
                            "-b", self.args.iperf_bitrate, "-J"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
            while p.poll() is None and not self.stop.is_set():
                time.sleep(0.1)
            if p.poll() is None:
                p.kill()
            out, _ = p.communicate()
            try:
                self.iperf_runs.append(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9)
            except (ValueError, KeyError, TypeError):
                if not self.stop.is_set():
                    self.stop.wait(1)        # a run lost in a kill window: try again shortly
            self.procs.remove(p)
        server.kill()

    def kill_worker(self, rng) -> None:
        """SIGKILL one worker; how long until the switch has all its workers again, without it?"""
        if self.args.kills_between_reloads:
            # Only once the last SIGHUP's reload is over (to tell the two apart: a kill during one is a death, too).
            deadline = time.monotonic() + 5
            while len(self.events("config.reloaded")) + len(self.events("config.reload_failed")) < self.reloads \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
        pids = self.workers()
        if not pids:
            self.errors.append(f"{self.now():.1f}s: no worker to kill")
            return
        victim = rng.choice(pids)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:          # replaced by a reload meanwhile: the next one then
            return
        killed_at, t, wall = time.monotonic(), self.now(), time.time()
        replaced_in = None
        while time.monotonic() - killed_at < 3.0:
            now_pids = self.workers()
            if victim not in now_pids and len(now_pids) >= len(pids):
                replaced_in = time.monotonic() - killed_at
                break
            time.sleep(0.01)
        self.kills.append({"t": t, "wall": wall, "pid": victim, "replaced_in": replaced_in})

    def sample(self, pids: list[int]) -> None:
        t = self.now()
        self.pss.append((t, sum(pss_kb(pid) for pid in [self.switch.pid] + pids)))
        counters = self.ports()
        if self.counters:
            _, prev = self.counters[-1]
            for port in self.permanent:
                for key, v in counters[port].items():
                    if v < prev[port][key]:
                        self.backwards.append(f"{t:.1f}s {port}.{key}: {prev[port][key]} -> {v}")
        self.counters.append((t, {p: counters[p] for p in self.permanent}))

    # --- the run ----------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        self.start()
        self.permanent = [self.lab.name(f"p{i}") for i in range(4)]
        first_counters = {p: c for p, c in self.ports().items() if p in self.permanent}
        self.t0, self.wall0 = time.monotonic(), time.time()
        pings = {(0, 1): self.ping(0, 1), (3, 2): self.ping(3, 2)}
        iperf = threading.Thread(target=self.iperf_loop, daemon=True)
        iperf.start()
        next_burst, next_reload, next_kill = 3.0, a.reload_every, 5.0
        extra = False
        rng = random.Random(a.seed)
        while self.now() < a.seconds:
            tick = time.monotonic()
            if self.switch.poll() is not None:
                tail = [line for line in self.log().splitlines() if not line.startswith("{")][-3:]
                self.errors.append(f"switch exited ({self.switch.returncode}) at {self.now():.1f}s: "
                                   + " | ".join(line.strip() for line in tail))
                break
            pids = self.workers()
            try:
                self.sample(pids)
            except RuntimeError as e:
                self.errors.append(f"{self.now():.1f}s: {e}")
            if self.now() >= next_burst:
                self.popen(["ip", "netns", "exec", self.hosts[1], sys.executable, os.path.abspath(__file__), "--burst", "eth0", "500"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.bursts += 1
                next_burst += 3.0
            if self.now() >= next_reload:
                extra = not extra
                self.write_config(extra)
                self.switch.send_signal(signal.SIGHUP)
                self.reloads += 1
                next_reload += a.reload_every
            if self.now() >= next_kill:
                self.kill_worker(rng)
                next_kill += a.kill_every
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        end = self.now()
        self.stop.set()
        ping_results = {}
        for (src, dst), p in pings.items():
            p.send_signal(signal.SIGINT)
            p.wait(timeout=10)
            with open(p.out_path) as f:
                out = f.read()
            ping_results[f"c{src}->c{dst}"] = (src, dst, out)
        iperf.join(timeout=15)
        time.sleep(1.0)
        try:
            last_counters = self.ports()
        except RuntimeError as e:           # the switch is gone: judge on the last sample
            self.errors.append(f"end: {e}")
            last_counters = self.counters[-1][1] if self.counters else first_counters
        alive = self.switch.poll() is None
        return self.report(end, ping_results, first_counters, last_counters, alive)

    # --- the verdict ------------------------------------------------------------

    def in_kill_window(self, wall: float) -> bool:
        return any(k["wall"] - KILL_BEFORE <= wall <= k["wall"] + KILL_AFTER for k in self.kills)

    def report(self, end, ping_results, first_counters, last_counters, alive) -> dict:
        a = self.args
        checks = {}
        # PSS: the first samples after the warm-up, against the last ones.
        pss = [(t, kb) for t, kb in self.pss if t >= min(5.0, a.seconds / 4)]
        head = statistics.mean(kb for _, kb in pss[:5]) / 1024 if pss else 0
        tail = statistics.mean(kb for _, kb in pss[-5:]) / 1024 if pss else 0
        checks["pss_flat"] = bool(pss) and abs(tail - head) <= a.pss_mb
        # Pings: which requests went unanswered, and were they in a kill window?
        pings = {}
        for label, (src, dst, out) in ping_results.items():
            answered, unanswered = set(), {}
            for line in out.splitlines():
                m = re.match(r"\[(\d+\.\d+)\] .*icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", line)
                if m:
                    answered.add(int(m.group(2)))
                    continue
                m = re.match(r"\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)", line)
                if m:
                    # -O reports a request still unanswered when it sends the next one, 0.1 s later
                    unanswered[int(m.group(2))] = float(m.group(1)) - 0.1
            m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
            sent = int(m.group(1)) if m else 0
            lost = {seq: t for seq, t in unanswered.items() if seq not in answered}
            outside = sorted(seq for seq, t in lost.items() if not self.in_kill_window(t))
            pings[label] = {"sent": sent, "received": len(answered), "lost": len(lost),
                            "lost_in_kill_windows": len(lost) - len(outside), "lost_outside": outside}
            pings[label]["port"] = self.lab.name(f"p{src}")
        checks["no_loss_outside_kill_windows"] = all(not p["lost_outside"] for p in pings.values()) and \
            all(p["sent"] > 0 for p in pings.values())
        checks["pings_ran_throughout"] = all(p["sent"] >= 0.8 * end / 0.1 for p in pings.values())
        checks["workers_replaced_within_1s"] = bool(self.kills) and all(
            k["replaced_in"] is not None and k["replaced_in"] < 1.0 for k in self.kills)
        # Counters: never backwards; each pinging port took in at least what its ping sent.
        rx = {}
        for label, p in pings.items():
            port = p["port"]
            rx[port] = last_counters[port]["rx_packets"] - first_counters[port]["rx_packets"]
        checks["counters_monotonic"] = not self.backwards
        checks["rx_covers_pings"] = all(rx[p["port"]] >= p["sent"] for p in pings.values())
        reloaded = self.events("config.reloaded")
        failed = self.events("config.reload_failed")
        checks["reloads_applied"] = not failed and len(reloaded) >= self.reloads - 1 and \
            not any(e.get("failed") for e in reloaded)
        checks["switch_alive"] = alive and not self.errors
        rep = {
            "tag": self.tag, "seconds": round(end, 1), "passed": all(checks.values()), "checks": checks,
            "pss_mb": {"first": round(head, 2), "last": round(tail, 2), "delta": round(tail - head, 2),
                       "min": round(min((kb for _, kb in pss), default=0) / 1024, 2),
                       "max": round(max((kb for _, kb in pss), default=0) / 1024, 2), "samples": len(self.pss)},
            "pings": {k: {kk: vv for kk, vv in v.items() if kk != "port"} for k, v in pings.items()},
            "rx_packets": rx,
            "kills": [{"t": round(k["t"], 1), "replaced_in_s": None if k["replaced_in"] is None
                       else round(k["replaced_in"], 3)} for k in self.kills],
            "reloads": {"sent": self.reloads, "applied": len(reloaded), "failed": len(failed)},
            "broadcast_bursts": self.bursts,
            "iperf3": {"runs": len(self.iperf_runs),
                       "gbit_s_median": round(statistics.median(self.iperf_runs), 2) if self.iperf_runs else None},
            "counters_backwards": self.backwards[:20],
            "errors": self.errors[:20],
        }
        return rep


def text_report(rep: dict) -> str:
    lines = [f"soak: {rep['seconds']} s -- {'PASS' if rep['passed'] else 'FAIL'}"]
    p = rep["pss_mb"]
    lines.append(f"  PSS (control + workers): first {p['first']} MB, last {p['last']} MB, delta {p['delta']:+} MB "
                 f"(min {p['min']}, max {p['max']}, {p['samples']} samples)")
    for label, v in rep["pings"].items():
        lines.append(f"  ping {label}: {v['received']}/{v['sent']} answered, {v['lost_in_kill_windows']} lost in kill "
                     f"windows, {len(v['lost_outside'])} outside {v['lost_outside'][:10] or ''}")
    ks = rep["kills"]
    lines.append(f"  worker kills: {len(ks)}, replaced in (s): {[k['replaced_in_s'] for k in ks]}")
    r = rep["reloads"]
    lines.append(f"  reloads: {r['sent']} sent, {r['applied']} applied, {r['failed']} failed")
    lines.append(f"  broadcast bursts: {rep['broadcast_bursts']} x 500; iperf3 runs: {rep['iperf3']['runs']}, "
                 f"median {rep['iperf3']['gbit_s_median']} Gbit/s")
    lines.append(f"  rx_packets of the pinging ports: {rep['rx_packets']}")
    for k, ok in rep["checks"].items():
        lines.append(f"  [{'ok' if ok else 'FAIL'}] {k}")
    for e in rep["counters_backwards"] + rep["errors"]:
        lines.append(f"  ! {e}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--burst":
        burst(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--reload-every", type=float, default=4.0)
    ap.add_argument("--kill-every", type=float, default=10.0)
    ap.add_argument("--iperf-bitrate", default="1G", help="iperf3 --bitrate of the TCP runs (default 1G)")
    ap.add_argument("--pss-mb", type=float, default=4.0, help="PSS may move this much, first vs last (MB)")
    ap.add_argument("--kills-between-reloads", action="store_true",
                    help="never SIGKILL a worker while a reload is under way")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", help="also write the report as JSON here")
    ap.add_argument("--keep-log", help="copy the switch's log here at the end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (namespaces, TAP devices)", file=sys.stderr)
        return 2
    soak = Soak(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        rep = soak.run()
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"soak: could not run: {e}", file=sys.stderr)
        return 2
    finally:
        soak.close()
    print(text_report(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=2)
    return 0 if rep["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
