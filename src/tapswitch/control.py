"""Control socket: the running switch answers `tapswitch ports` / `fdb` over a Unix socket.

One JSON request per connection, one JSON reply:
    {"cmd": "ports"} -> {"ok": true, "result": [...]}
    {"cmd": "fdb_flush", "port": "web0"} -> {"ok": true, "result": {"flushed": 3}}
    anything wrong -> {"ok": false, "error": "one line"}
The socket is mode 0600 and only root or the switch's own user may talk to it
(SO_PEERCRED).
"""

import itertools
import json
import os
import socket
import socketserver
import stat
import struct
import threading

import structlog

log = structlog.get_logger("tapswitch.control")

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0    # seconds either side waits for the other: a request, a reply
RELOAD_WAIT = 30.0      # seconds the switch waits for its reload before it answers that it goes on


class ControlError(Exception):
    """The request cannot be served; the message goes back to the client."""


class Listing:
    """A result that is a list too long to build as one string (the MAC table: millions of
    entries): the reply is written a chunk of items at a time, as they are made."""

    CHUNK = 4096    # items serialised and sent at once

    def __init__(self, items):
        self.items = items

    def chunks(self):
        """The reply's bytes: the same line json.dumps of the whole reply would be."""
        yield b'{"ok": true, "result": ['
        items, first = iter(self.items), True
        while chunk := list(itertools.islice(items, self.CHUNK)):
            yield (b"" if first else b", ") + json.dumps(chunk)[1:-1].encode()
            first = False
        yield b"]}\n"


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class _Handler(socketserver.StreamRequestHandler):
    timeout = CLIENT_TIMEOUT

    def handle(self) -> None:
        try:
            uid = _peer_uid(self.request)
            if uid not in (0, os.getuid()):
                self._reply({"ok": False, "error": "permission denied"})
                return
            line = self.rfile.readline(MAX_REQUEST)
        except OSError as e:
            self._client_lost(e)
            return
        if not line:
            return              # connected and closed (stop_serving's wake-up): nothing to answer
        try:
            try:
                request = json.loads(line)
            except RecursionError:      # not a ValueError: the parser's own stack ran out
                raise ControlError("a request is a JSON object with a \"cmd\" string, not nested this deep") from None
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ControlError("a request is a JSON object with a \"cmd\" string")
            result = self.server.dispatch(request)
        except (ControlError, ValueError) as e:
            self._reply({"ok": False, "error": str(e)})
            return
        if isinstance(result, Listing):
            self._send(result.chunks())
        else:
            self._reply({"ok": True, "result": result})

    def _reply(self, obj) -> None:
        self._send([json.dumps(obj).encode() + b"\n"])

    def _send(self, chunks) -> None:
        try:
            for chunk in chunks:
                self.wfile.write(chunk)
        except OSError as e:
            self._client_lost(e)

    def _client_lost(self, e: OSError) -> None:
        """The client went away (gave up waiting, say) or stalled: its loss, not the switch's,
        so a line in the log, not socketserver's traceback."""
        if isinstance(e, TimeoutError):
            log.warning("control.client_timed_out", seconds=self.timeout)
        else:
            log.debug("control.client_gone", error=e.strerror or str(e))


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves commands from `handlers` (cmd name -> callable taking the request)."""

    daemon_threads = True

    def __init__(self, path: str, handlers: dict):
        self.path = path
        self.handlers = handlers
        # The socket's directory (/run/tapswitch by default) goes at
        # remove_dir() if this switch made it, as systemd's RuntimeDirectory does.
        self.made_dir = _claim(path)
        old = os.umask(0o177)
        try:
            try:
                super().__init__(path, _Handler)
            except FileNotFoundError:
                # Another switch, stopping, took the directory away meanwhile.
                self.made_dir = _make_dir(path) or self.made_dir
                super().__init__(path, _Handler)
        except BaseException:
            self.remove_dir()
            raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)

    def dispatch(self, request: dict):
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            raise ControlError(f"unknown command {request['cmd']!r}")
        return handler(request)

    def start(self) -> None:
        self.thread.start()
        log.info("control.listening", socket=self.path)

    def stop(self) -> None:
        if self.thread.is_alive():
            stop_serving(self)
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def remove_dir(self) -> None:
        """After stop(), and after whatever else the switch keeps beside its
        socket: the directories made for the socket, each while empty (not
        one another switch's socket, or a dead run's state, is in now)."""
        if self.made_dir is None:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            while True:
                os.rmdir(directory)
                if directory == self.made_dir:
                    break
                directory = os.path.dirname(directory)
        except OSError:
            pass                # not empty (another switch's), or gone already
        self.made_dir = None


def stop_serving(server: socketserver.BaseServer) -> None:
    """server.shutdown() without waiting out serve_forever's poll (half a second): once
    shutdown has asked, a connection wakes the serving thread's select, and serve_forever
    looks at the request before it accepts anything. Only for a server that is serving."""
    asking = threading.Thread(target=server.shutdown, name="shutdown")
    asking.start()
    while asking.is_alive():
        _wake(server)
        asking.join(0.02)


def _wake(server: socketserver.BaseServer) -> None:
    family, address = server.address_family, server.server_address
    if family == socket.AF_INET and address[0] in ("", "0.0.0.0"):
        address = ("127.0.0.1", address[1])
    elif family == socket.AF_INET6 and address[0] in ("", "::"):
        address = ("::1", *address[1:])
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.1)
            s.connect(address)
    except OSError:
        pass                    # a full backlog, say: the poll ends the wait anyway


def _make_dir(path: str) -> str | None:
    """Make the socket's directory, and any parent missing, as makedirs does;
    the topmost one made, or None if none was missing."""
    leaf = directory = os.path.dirname(os.path.abspath(path))
    top = None
    while not os.path.isdir(directory):
        top, directory = directory, os.path.dirname(directory)
    if top is None:
        return None
    try:
        os.makedirs(leaf, mode=0o755)
    except FileExistsError:
        return None             # made meanwhile, by another switch: theirs
    return top


def _exposed(path: str) -> str | None:
    """Why another user than root (or the switch's own) could put files where the socket at
    `path` goes, or None. The switch, as root, keeps its state file beside the socket and
    rewrites it (`<socket>.state`, through `<socket>.state.tmp`): a symlink planted there
    would have it overwrite any file, a crafted state file have a start "heal" interfaces and
    namespaces that are not its own. So every directory up to /, as written and as resolved,
    is root's or the switch's; the socket's own is writable by no one else, one above it only
    if it is sticky, as /tmp is (no one may rename there what is not theirs). A directory not
    there yet is made by the switch."""
    euid = os.geteuid()
    leaf = os.path.dirname(os.path.abspath(path))
    for start in (leaf, os.path.realpath(leaf)):
        directory = start
        while True:
            try:
                st = os.stat(directory)
            except FileNotFoundError:
                st = None
            if st is not None:
                if st.st_uid not in (0, euid):
                    return f"{directory} belongs to uid {st.st_uid}"
                sticky = directory != start and st.st_mode & stat.S_ISVTX
                if st.st_mode & 0o022 and not sticky:
                    return f"{directory} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o})"
            if directory == "/":
                break
            directory = os.path.dirname(directory)
    return None


def _claim(path: str) -> str | None:
    """Make way for our socket: refuse if its directory is not the switch's alone (_exposed), or
    if a live switch owns it; remove a stale one. The topmost directory made for it (_make_dir), or None."""
    exposed = _exposed(path)
    if exposed is not None:
        raise ControlError(f"control socket {path}: {exposed}; another user could replace the socket, or the "
                           f"state file the switch writes beside it as root: give a directory only root may "
                           f"write to (the default /run/tapswitch)")
    made = _make_dir(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return made
    if not stat.S_ISSOCK(mode):      # the path names something else (a typo?): not ours to remove
        raise ControlError(f"control socket {path} exists and is not a socket; left as it is")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)      # left by a switch that died
        return made
    finally:
        probe.close()
    raise ControlError(f"another tapswitch is running on control socket {path}")


def answers(path: str) -> bool:
    """Whether a switch may listen on the socket at `path`: False for one that nobody accepts
    on (the socket a switch killed by SIGKILL left) or that is gone; True also when the probe
    cannot tell (another user's switch, a full backlog): the request says why, then."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)     # the switch takes a connection closed unasked as no error
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
    return True


def request(path: str, cmd: str, **args):
    """Send one command to the switch at `path`; return its result or raise ControlError.
    A reload is answered when it is done, or when the switch gives up waiting for it."""
    timeout = CLIENT_TIMEOUT + (RELOAD_WAIT if cmd == "reload" else 0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        s.close()
        raise ControlError(f"no switch is running on {path}") from None
    except TimeoutError:
        s.close()
        raise ControlError(f"no answer from the switch on {path} within {timeout:g} s") from None
    except OSError as e:
        s.close()
        raise ControlError(f"cannot reach the switch on {path}: {e.strerror or e}") from None
    try:
        with s, s.makefile("rwb") as f:
            f.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            f.flush()
            line = f.readline()    # as long as it is: the MAC table's, of millions of entries, too
    except TimeoutError:
        raise ControlError(f"no answer from the switch on {path} within {timeout:g} s") from None
    except OSError as e:
        raise ControlError(f"lost the switch on {path}: {e.strerror or e}") from None
    if not line.endswith(b"\n"):
        raise ControlError(f"the switch on {path} closed the connection")
    reply = _reply(line)
    if reply is None:
        raise ControlError(f"{path} did not answer as a switch does: is it a tapswitch control socket?")
    if not reply["ok"]:
        raise ControlError(reply["error"])
    return reply["result"]


def _reply(line: bytes) -> dict | None:
    """The switch's reply in `line`, or None if it is none (another program's socket)."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return None
    if reply["ok"]:
        return reply if "result" in reply else None
    return reply if isinstance(reply.get("error"), str) else None
