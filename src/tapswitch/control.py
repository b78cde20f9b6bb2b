"""Control socket: the running switch answers `tapswitch ports` / `fdb` over a Unix socket.

One JSON request per connection (a line of UTF-8, at most MAX_REQUEST bytes, sent within
CLIENT_TIMEOUT; what follows it is let go), one JSON reply:
    {"cmd": "ports"} -> {"ok": true, "result": [...]}
    {"cmd": "fdb_flush", "port": "web0"} -> {"ok": true, "result": {"flushed": 3}}
    {"cmd": "fdb", "port": "web0"} -> {"ok": true, "filters": ["port"], "result": [...]}
    anything wrong -> {"ok": false, "error": "one line"}
A switch ignores a request's fields it does not know: a listing says which filters it
applied ("filters", absent when the request gave none), so that a client can tell a
switch older than a filter, which sent the whole list, from one that picked the items.
The socket is mode 0600 and only root or the switch's own user may talk to it
(SO_PEERCRED). It is at its path only once the switch listens on it (bound as
`<socket>.tmp`, then moved there): a client that finds it is answered. The switch
that listens on it holds `<socket>.lock` (flock) from before it looks at the path
until it has stopped: one switch per socket, and per the state file it keeps
beside it.
"""

import contextlib
import errno
import fcntl
import itertools
import json
import os
import socket
import socketserver
import stat
import struct
import threading
import time

import structlog

from tapswitch.saidonce import SaidOnce

log = structlog.get_logger("tapswitch.control")

MAX_REQUEST = 64 * 1024
MAX_SKIPPED = 256 * MAX_REQUEST     # bytes of a longer request read (and let go) before it is refused
CLIENT_TIMEOUT = 5.0    # seconds either side waits for the other: a request, a reply (not a listing's reader)
RELOAD_WAIT = 30.0      # seconds the switch waits for its reload before it answers that it goes on
RECV_SIZE = 1 << 20     # bytes a listing's reader takes from the socket at once
ACCEPT_WAIT = 0.1       # seconds a server's thread waits after an accept that found no descriptor free

# A list result as json.dumps writes the reply: the head, items joined by ", ", the tail. No
# item's text holds ", {" (json.dumps writes no space inside a string it makes of a MAC, a
# number or a port's name, which has none): a list's reader finds where items end by it.
LISTING_HEAD = b'{"ok": true, "result": ['
ITEM_SEPARATOR = b", "
LISTING_TAIL = b"]}\n"
# A filtered listing's head: FILTERED_HEAD, the names of the filters applied as a JSON list,
# RESULT_OPENS. Only a filtered listing has it: a client older than it reads a reply of any other
# head whole (correct, but held whole), and a whole table keeps the head such a client streams.
FILTERED_HEAD = b'{"ok": true, "filters": '
RESULT_OPENS = b', "result": ['
MAX_HEAD = 4096         # bytes a filtered listing's head may take


class ControlError(Exception):
    """The request cannot be served; the message goes back to the client."""


def mac_arg(value) -> str:
    """A MAC address a request names (`fdb --mac`, `fdb add`: 02:00:00:00:00:10 or
    02-00-00-00-00-10), as the config reads one; ControlError if it is none. The switch checks
    it, and so does a client that picks a listing's entries itself."""
    from tapswitch import config
    try:
        return config.mac_address(value)
    except ValueError:
        raise ControlError(f"not a MAC address: {value!r} (six hex octets, as in 02:00:00:00:00:10 "
                           f"or 02-00-00-00-00-10)") from None


def unicast_mac_arg(value) -> str:
    """A MAC an entry of the MAC table may have (`fdb add|del`): mac_arg's, and unicast, not zero."""
    mac = mac_arg(value)
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise ControlError(f"{mac} is not a unicast address")
    return mac


def vlan_arg(value) -> int:
    """A VLAN a request names, 1-4094 (not a JSON true); ControlError if it is none."""
    if type(value) is not int or not 1 <= value <= 4094:
        raise ControlError(f"VLAN must be 1-4094, not {value!r}")
    return value


class Listing:
    """A result that is a list too long to build as one string (the MAC table: millions of
    entries): the reply is written a chunk of items at a time, as they are made. `encoded`:
    each item is its JSON text already, as json.dumps writes it (the MAC table's, made from
    a format, in a third of the time a dict and json.dumps take). `filters`: the names of
    the request's filters that picked the items, said in the reply's head."""

    CHUNK = 4096    # items serialised and sent at once

    def __init__(self, items, encoded: bool = False, filters: list[str] | None = None):
        self.items = items
        self.encoded = encoded
        self.filters = filters

    def chunks(self):
        """The reply's bytes: the same line json.dumps of the whole reply would be."""
        yield LISTING_HEAD if not self.filters else FILTERED_HEAD + json.dumps(self.filters).encode() + RESULT_OPENS
        items, first = iter(self.items), True
        while chunk := list(itertools.islice(items, self.CHUNK)):
            text = ", ".join(chunk) if self.encoded else json.dumps(chunk)[1:-1]
            yield (b"" if first else ITEM_SEPARATOR) + text.encode()
            first = False
        yield LISTING_TAIL


def _parse(line: bytes):
    """A request's line as JSON; ControlError saying what it is not. The parser's own words alone
    ("Expecting value: line 2 column 1") did not say that the request was not JSON, and
    json.loads reads bytes as UTF-16 or UTF-32 too, when they look like it: "'utf-16-le' codec
    can't decode byte 0x0a" for a line of two bytes that are not UTF-8."""
    try:
        text = line.decode()
    except UnicodeDecodeError as e:
        raise ControlError(f"a request is JSON in UTF-8: {e.reason} at byte {e.start}") from None
    if not text.strip():
        raise ControlError("an empty request: a request is a JSON object with a \"cmd\" string")
    try:
        return json.loads(text)
    except RecursionError:      # not a ValueError: the parser's own stack ran out
        raise ControlError("a request is a JSON object with a \"cmd\" string, not nested this deep") from None
    except ValueError as e:
        raise ControlError(f"a request is one line of JSON, not this: {e}") from None


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
            line, too_long = self._read_request()
        except OSError as e:
            self._client_lost(e)
            return
        if not line:
            return              # connected and closed (stop_serving's wake-up): nothing to answer
        try:
            if too_long:
                raise ControlError(f"a request is one line of at most {MAX_REQUEST} bytes; this one is longer")
            request = _parse(line)
            if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
                raise ControlError("a request is a JSON object with a \"cmd\" string")
            result = self.server.dispatch(request)
        except (ControlError, ValueError) as e:
            self._reply({"ok": False, "error": str(e)})
            return
        if isinstance(result, Listing):
            # Its reader may write each part as it comes (`fdb --json | less`) and stop reading
            # meanwhile, for as long as its user reads: the listing waits for it while it stays
            # connected (the timeout cut it short after 5 s). One that goes fails the write.
            self.request.settimeout(None)
            self._send(result.chunks())
        else:
            self._reply({"ok": True, "result": result})

    def _read_request(self) -> tuple[bytes, bool]:
        """The request's line (its newline too, if it came before the client stopped sending), at
        most MAX_REQUEST bytes, and whether it was longer. A longer one's rest is read and let go,
        up to its newline (at most MAX_SKIPPED bytes of it: a client that sends more loses the
        reply), so that the client reads the reply: closed on bytes left unread, the connection
        was reset, and the reply lost with it (EPIPE, ECONNRESET); and the part read could be a
        request whole but for its newline.

        All of it within the handler's timeout (CLIENT_TIMEOUT), not each read: the socket's
        timeout bounds one recv, and a client that sent a byte every few seconds held this
        thread for as long as it went on (through MAX_SKIPPED bytes: years). TimeoutError past it."""
        deadline = time.monotonic() + self.timeout
        line, skipped = b"", 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not come whole in time")
            self.request.settimeout(left)
            part = self.request.recv(MAX_REQUEST)
            if not part:
                break                   # the client stopped sending: the line ends there
            end = part.find(b"\n")
            if end >= 0:
                part = part[:end + 1]   # what came after it is let go: one request per connection
            if not skipped:
                room = MAX_REQUEST - len(line)
                line += part[:room]
                skipped = len(part[room:])
            else:
                skipped += len(part)
            if end >= 0 or skipped >= MAX_SKIPPED:
                break
        self.request.settimeout(self.timeout)      # the reply's writes, each
        return line, skipped > 0

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


class AcceptWaits:
    """A socketserver server whose accept, out of descriptors (EMFILE, ENFILE), waits ACCEPT_WAIT
    before the next try. The connection stays waiting, serve_forever was told so again at once
    and tried again at once: its thread spun a whole CPU until a descriptor came free. Said
    once while it lasts (accept_failed); the client waits for its answer (or gives up)."""

    def __init__(self, *args, **kwargs):
        self.accept_failing = SaidOnce()    # the accepts that find no descriptor free, until one does
        super().__init__(*args, **kwargs)

    def get_request(self):
        try:
            request = super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # EMFILE or ENFILE, one failure: no descriptor free, said once whichever a try finds.
                if self.accept_failing.news("no descriptor free"):
                    self.accept_failed(e.strerror, f"tried again every {ACCEPT_WAIT:g} s until a descriptor is free")
                time.sleep(ACCEPT_WAIT)
            raise
        self.accept_failing.over()
        return request

    def accept_failed(self, error: str, reason: str) -> None:
        """Say it: each server as its own event."""
        raise NotImplementedError


class ControlServer(AcceptWaits, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves commands from `handlers` (cmd name -> callable taking the request)."""

    daemon_threads = True

    def __init__(self, path: str, handlers: dict):
        self.path = path
        self.handlers = handlers
        # The socket's directory (/run/tapswitch by default) goes at
        # release() if this switch made it, as systemd's RuntimeDirectory does.
        self.made_dir: str | None = None
        self.lock: int | None = None    # the descriptor of <socket>.lock, flocked while this switch lives
        self.bound = False              # the socket is bound: ours, to remove with the rest
        self.binding = _binding_path(path)     # where it is bound, until it listens at `path` (server_activate)
        try:
            self.made_dir = _claim_dir(path)
            try:
                self.lock = _lock(path)     # before the socket is looked at: see _lock
            except FileNotFoundError:
                # Another switch, stopping, took the directory away meanwhile: made again, and
                # looked at again as the first was (_claim_dir), since in a sticky directory
                # (/tmp) another user may have made it first.
                self.made_dir = _claim_dir(path) or self.made_dir
                self.lock = _lock(path)
            _remove_stale(path)
            old = os.umask(0o177)
            try:
                super().__init__(path, _Handler)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        except BaseException:      # a stop signal's KeyboardInterrupt too, once the socket is bound
            if self.bound:
                self.server_close()
                for name in {self.binding, path}:      # either, as far as it got
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
            self.release()
            raise
        self.thread = threading.Thread(target=self.serve_forever, name="control", daemon=True)

    def server_bind(self) -> None:
        """Bind the socket beside its path (`<socket>.tmp`): server_activate puts it there once
        it listens. Bound at its path, it refused connections until the listen ("Connection
        refused"; `tapswitch` without -s took it for a dead switch's socket), and a client that
        waits for the path (a script, a test) could come in between on a busy host."""
        if self.binding != self.path:
            _remove_stale(self.binding)     # a start killed before it listened left it (we hold the lock)
        self.socket.bind(self.binding)
        self.bound = True

    def server_activate(self) -> None:
        super().server_activate()
        if self.binding != self.path:
            os.rename(self.binding, self.path)
        self.server_address = self.path     # _wake connects to it

    def accept_failed(self, error: str, reason: str) -> None:
        log.error("control.accept_failed", socket=self.path, error=error, reason=reason)

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

    def release(self) -> None:
        """After stop(), and after whatever else the switch keeps beside its socket
        (the state file): let go of the socket's lock, which lets another switch
        start on it, and remove the directories made for the socket, each while
        empty (not one another switch's socket, or a dead run's state, is in now)."""
        if self.lock is not None:
            # Unlinked before it is let go: a switch that opened it meanwhile, and gets the
            # lock once it is let go, finds it is no longer at its path (_lock), and tries again.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path(self.path))
            os.close(self.lock)
            self.lock = None
        _remove_dirs(self.path, self.made_dir)
        self.made_dir = None


def _binding_path(path: str) -> str:
    """Where the control socket at `path` is bound until it listens (ControlServer.server_bind):
    `<socket>.tmp`, or `path` itself if that name is longer than a socket's may be. There, lost
    race, stated: a client that connects between the bind and the listen is refused."""
    from tapswitch.config import SUN_PATH_MAX
    binding = path + ".tmp"
    return binding if len(os.fsencode(binding)) <= SUN_PATH_MAX else path


def _remove_dirs(path: str, made: str | None) -> None:
    """Remove the directories made for the socket at `path`, up to `made` (the topmost), each
    while it is empty."""
    if made is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        while True:
            os.rmdir(directory)
            if directory == made:
                break
            directory = os.path.dirname(directory)
    except OSError:
        pass                # not empty (another switch's), or gone already


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
    """Make the socket's directory, and any parent missing, each mode 0755 (less the umask);
    the topmost one made, or None if none was. Not os.makedirs: it makes the parents 0777 less
    the umask, writable by anyone under a umask of 0, where another user could rename the
    directory below away and put one of their own in its place."""
    directory = os.path.dirname(os.path.abspath(path))
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    made: list[str] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            continue            # made meanwhile, by another switch: theirs
        except OSError:
            # Not made whole (ENOSPC, EDQUOT...): none of it stays, as a failed start leaves nothing.
            for ours in reversed(made):
                with contextlib.suppress(OSError):
                    os.rmdir(ours)
            raise
        made.append(directory)
    return made[0] if made else None


def _exposed(path: str) -> str | None:
    """Why another user than root (or the switch's own) could put files where the socket at
    `path` goes, or None. The switch, as root, keeps its state file beside the socket and
    rewrites it (`<socket>.state`, through `<socket>.state.tmp`): a symlink planted there
    would have it overwrite any file, a crafted state file have a start "heal" interfaces and
    namespaces that are not its own. So every directory up to /, as written and as resolved,
    is root's or the switch's; the socket's own is writable by no one else, one above it only
    if it is sticky, as /tmp is (no one may rename there what is not theirs). A directory not
    there yet is made by the switch.

    As written, a symlink is held to its own owner, not its target's: another user's symlink
    in a sticky directory (/tmp/x -> a directory of root's) is theirs to remove and make
    again, pointing at one of their own once the switch has looked."""
    euid = os.geteuid()
    leaf = os.path.dirname(os.path.abspath(path))
    for start in (leaf, os.path.realpath(leaf)):
        directory = start
        while True:
            try:
                st = os.lstat(directory)
                if stat.S_ISLNK(st.st_mode):
                    if st.st_uid not in (0, euid):
                        return f"{directory} is a symlink of uid {st.st_uid}"
                    st = os.stat(directory)     # its target's mode (the walk as resolved checks its parents)
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


def lock_path(path: str) -> str:
    """The lock file of the control socket at `path`."""
    return path + ".lock"


def _lock(path: str) -> int:
    """Take the lock of the control socket at `path` (flock on `<socket>.lock`, which says
    the pid of its holder) and return its descriptor; ControlError naming the switch that
    holds it. The kernel lets go of it when the process ends, however it ends: a lock file
    that a killed switch left is taken as it is.

    It is taken before the socket is looked at: two switches starting at once beside the socket
    a killed one left would each find it stale, each remove it and listen, the later one on a
    path from which it had just removed the earlier one's socket, both writing one state file."""
    name = lock_path(path)
    while True:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                pid = f" (pid {holder})" if holder.isdigit() else ""
                raise ControlError(f"another tapswitch is running on control socket {path}{pid}") from None
            # The holder that let go before we got it unlinked the file first (release): a lock on a
            # file no longer at its name locks nothing that a later start would see. Open it again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(name, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _claim_dir(path: str) -> str | None:
    """Make way for our socket: refuse if its directory is not the switch's alone (_exposed).
    The topmost directory made for it (_make_dir), or None.

    Looked at before anything is made, and again after: in a sticky directory (/tmp) another
    user may make the one the socket goes in between the first look and _make_dir, which then
    finds it there and takes it for a switch's."""
    exposed = _exposed(path)
    if exposed is None:
        made = _make_dir(path)
        exposed = _exposed(path)
        if exposed is None:
            return made
        _remove_dirs(path, made)
    raise ControlError(f"control socket {path}: {exposed}; another user could replace the socket, or the "
                       f"state file the switch writes beside it as root: give a directory only root may "
                       f"write to (the default /run/tapswitch)")


def _remove_stale(path: str) -> None:
    """Remove the socket at `path` that a switch which died left (we hold its lock); refuse one
    a switch listens on (of a version that took no lock) or anything else at `path`."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):      # the path names something else (a typo?): not ours to remove
        raise ControlError(f"control socket {path} exists and is not a socket; left as it is")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)      # left by a switch that died
        return
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


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        s.close()
        raise ControlError(f"no switch is running on {path}") from None
    except ConnectionRefusedError:
        s.close()
        raise ControlError(_refused(path)) from None
    except TimeoutError:
        s.close()
        raise ControlError(f"no answer from the switch on {path} within {timeout:g} s") from None
    except OSError as e:
        s.close()
        raise ControlError(f"cannot reach the switch on {path}: {e.strerror or e}") from None
    return s


def _refused(path: str) -> str:
    """Why a connection to `path` was refused: the kernel says "Connection refused" alike for a
    socket nobody listens on (the one a switch killed by SIGKILL left) and for a path that is
    no socket at all (`-s` given the config file, say)."""
    try:
        socket_there = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        socket_there = True         # gone meanwhile, or not ours to look at: the socket's case
    if not socket_there:
        return f"{path} is not a socket: give the switch's control socket (switch.control.socket)"
    return f"no switch is running on {path} (nobody listens on the socket: left by a switch that died)"


def _not_a_switch(path: str) -> ControlError:
    return ControlError(f"{path} did not answer as a switch does: is it a tapswitch control socket?")


def request(path: str, cmd: str, **args):
    """Send one command to the switch at `path`; return its result or raise ControlError.
    A reload is answered when it is done, or when the switch gives up waiting for it."""
    timeout = CLIENT_TIMEOUT + (RELOAD_WAIT if cmd == "reload" else 0)
    s = _connect(path, timeout)
    try:
        with s, s.makefile("rwb") as f:
            f.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            f.flush()
            line = f.readline()    # as long as it is: the MAC table's, of millions of entries, too
    except TimeoutError:
        raise ControlError(f"no answer from the switch on {path} within {timeout:g} s") from None
    except OSError as e:
        raise ControlError(f"lost the switch on {path}: {e.strerror or e}") from None
    return _result(path, line)


def request_listing(path: str, cmd: str, **args) -> "ListingReply":
    """request() for a command whose result is a list (the MAC table, of millions of entries):
    its items, a list of them at a time, decoded as they arrive, so that the reply is never
    held whole, as bytes or as objects. A reply that does not open as a list does (an error)
    is read whole and answered as request() answers it. Raises ControlError as it goes: a
    reader that prints as it reads may have printed part of the list when the switch is lost."""
    return ListingReply(path, cmd, args)


class ListingReply:
    """request_listing's reply, iterated a list of items at a time. `filters`, known once the
    first list has come: the names of the request's filters that the switch says picked the
    items, or None if it says none: a switch older than a filter ignores it, and sends all."""

    def __init__(self, path: str, cmd: str, args: dict):
        self.filters: list[str] | None = None
        self._batches = _read_listing(path, cmd, args, self)

    def __iter__(self):
        return self

    def __next__(self) -> list:
        return next(self._batches)


def _read_listing(path: str, cmd: str, args: dict, reply: ListingReply):
    s = _connect(path, CLIENT_TIMEOUT)
    with s:
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            yield from _listing(path, s, reply)
        except TimeoutError:
            raise ControlError(f"no answer from the switch on {path} within {CLIENT_TIMEOUT:g} s") from None
        except OSError as e:
            raise ControlError(f"lost the switch on {path}: {e.strerror or e}") from None


def _listing(path: str, s: socket.socket, reply: ListingReply):
    buf = b""
    while True:         # the head: LISTING_HEAD, or FILTERED_HEAD, the filters and RESULT_OPENS
        if buf.startswith(LISTING_HEAD):
            buf = buf[len(LISTING_HEAD):]
            break
        if buf.startswith(FILTERED_HEAD) and (end := buf.find(RESULT_OPENS)) >= 0:
            reply.filters = _filters(path, buf[len(FILTERED_HEAD):end])
            buf = buf[end + len(RESULT_OPENS):]
            break
        partial = (LISTING_HEAD.startswith(buf) or FILTERED_HEAD.startswith(buf)
                   or buf.startswith(FILTERED_HEAD) and len(buf) < MAX_HEAD and b"\n" not in buf)
        if not partial or not (data := s.recv(RECV_SIZE)):
            # An error, or another program: as request() reads it.
            while not buf.endswith(b"\n") and (data := s.recv(RECV_SIZE)):
                buf += data
            result = _result(path, buf)
            if not isinstance(result, list):
                raise _not_a_switch(path)
            yield result
            return
        buf += data
    while True:
        if buf.endswith(LISTING_TAIL):
            if len(buf) > len(LISTING_TAIL):
                yield _items(path, buf[:-len(LISTING_TAIL)])
            return
        if b"\n" in buf:          # the reply's end, and not a list's
            raise _not_a_switch(path)
        # The items complete so far, in one json.loads (one call into C for thousands of items).
        end = buf.rfind(b"}, {")
        if end >= 0:
            items, buf = buf[:end + 1], buf[end + 3:]
            yield _items(path, items)
        data = s.recv(RECV_SIZE)
        if not data:
            raise ControlError(f"the switch on {path} closed the connection")
        buf += data


def _filters(path: str, text: bytes) -> list[str]:
    try:
        filters = json.loads(text)
    except (ValueError, RecursionError):
        raise _not_a_switch(path) from None
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        raise _not_a_switch(path)
    return filters


def _items(path: str, text: bytes) -> list:
    try:
        return json.loads(b"[" + text + b"]")
    except (ValueError, RecursionError):
        raise _not_a_switch(path) from None


def _result(path: str, line: bytes):
    if not line.endswith(b"\n"):
        raise ControlError(f"the switch on {path} closed the connection")
    reply = _reply(line)
    if reply is None:
        raise _not_a_switch(path)
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
