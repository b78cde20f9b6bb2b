"""Run inside a namespace: a MAC flood, fast -- COUNT frames, each from a new random source MAC.

usage: flood.py DEV [--count N] [--pps RATE] [--dst MAC]

trafgen (netsniff-ng) writes the frames through its TX ring: 0x88b5 (IEEE local experimental)
frames of 60 bytes to DST (default: a unicast MAC nobody has, so the switch floods them), whose
source is 02 followed by five random bytes (trafgen's drnd(5)): unicast, locally administered,
a new one each frame. Paced to RATE frames/s (default 70000) so that the TAP's queue keeps up.
Prints trafgen's summary; the exit code is trafgen's. Without trafgen, a Python AF_PACKET loop
does the same, much more slowly.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

ETH_TYPE = 0x88B5
UNKNOWN = "02:00:5e:10:00:01"


def trafgen_config(dst: str) -> str:
    da = ", ".join(f"0x{x}" for x in dst.split(":"))
    return f"{{ {da}, 0x02, drnd(5), c16({ETH_TYPE:#06x}), fill(0x00, 46) }}\n"


def python_flood(dev: str, dst: str, count: int, pps: int) -> int:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    head, tail = bytes.fromhex(dst.replace(":", "")), ETH_TYPE.to_bytes(2, "big") + bytes(46)
    t0 = time.monotonic()
    for i in range(count):
        s.send(head + b"\x02" + os.urandom(5) + tail)
        if i % 256 == 255:
            ahead = (i + 1) / pps - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    print(f"{count} packets outgoing (python)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev")
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--pps", type=int, default=70_000)
    ap.add_argument("--dst", default=UNKNOWN)
    args = ap.parse_args()
    trafgen = shutil.which("trafgen")
    if not trafgen:
        return python_flood(args.dev, args.dst, args.count, args.pps)
    # The config on stdin (trafgen then runs on one CPU, as --cpus 1 asks anyway): a file for it
    # was left in /tmp by a flood killed before it ended (a test that failed, or timed out).
    r = subprocess.run([trafgen, "-i", "-", "-o", args.dev, "--cpus", "1", "--no-sock-mem", "-Q",
                        "-n", str(args.count), "-b", f"{args.pps}pps"], input=trafgen_config(args.dst),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(r.stdout)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
