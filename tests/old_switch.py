"""A switch of a tapswitch older than `fdb --port/--vlan/--mac`, as far as its control socket
goes: `python tests/old_switch.py SOCKET N` listens on SOCKET and answers `fdb` with its whole
MAC table of N entries, whatever else the request says, as it did (its handler was `lambda
req: self.fdb_info()`): the reply written a chunk of 4096 entries at a time, the line
json.dumps of {"ok": true, "result": [...]} is. `ports` it answers as a switch older still did
(before rx_missed and a port's error: 80fde8d^). Prints "listening" once it listens; runs until
it is killed. Entry i: MAC 02:00:00:00:HH:LL, VLAN 1 + i % 3, port p0 or p1, static every 7th."""

import json
import socketserver
import sys

CHUNK = 4096
OLD_COUNTERS = ["rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "tx_packets", "tx_bytes", "tx_errors",
                "tx_dropped", "flooded"]
PORTS = [{"name": f"p{i}", "state": "up", "mac": f"02:00:00:00:01:0{i}", "mtu": 1500, "speed": 10000,
          "remote": None, "queues": 1, "counters": {c: 7 * i + k for k, c in enumerate(OLD_COUNTERS)}}
         for i in range(2)]


def table(n: int) -> list[str]:
    return [json.dumps({"mac": f"02:00:00:00:{i >> 8 & 255:02x}:{i & 255:02x}", "vlan": 1 + i % 3,
                        "port": f"p{i % 2}", "age": i % 300, "static": i % 7 == 0}) for i in range(n)]


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        request = json.loads(self.rfile.readline())
        if request["cmd"] == "ports":
            self.wfile.write(json.dumps({"ok": True, "result": PORTS}).encode() + b"\n")
            return
        if request["cmd"] != "fdb":
            self.wfile.write(json.dumps({"ok": False, "error": f"unknown command {request['cmd']!r}"}).encode() + b"\n")
            return
        entries = self.server.entries
        try:
            self.wfile.write(b'{"ok": true, "result": [')
            for start in range(0, len(entries), CHUNK):
                self.wfile.write((", " if start else "").encode() + ", ".join(entries[start:start + CHUNK]).encode())
            self.wfile.write(b"]}\n")
        except OSError:
            pass        # the client went before the end (it refused its own --vlan 0): as the switch, no traceback


def main(path: str, n: int) -> None:
    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    server.entries = table(n)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
