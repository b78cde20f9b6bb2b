"""Command line: tapswitch run | check | ports | fdb [flush|add|del] | reload | --version.

Exit codes: 0 clean stop, 2 configuration error (nothing created), 1 runtime
failure with a one-line reason.
"""

import argparse
import glob
import itertools
import json
import operator
import os
import signal
import sys

import tapswitch

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
SOCKET_DIR = "/run/tapswitch"

PORT_COLUMNS = ["rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "rx_missed",
                "tx_packets", "tx_bytes", "tx_errors", "tx_dropped", "flooded"]


def path(value: str) -> str:
    """A -s or -c path: an empty one (`-s "$SOCK"` with SOCK unset) is a usage error, not no option."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path")
    return value


def _as_the_switch_reads(read):
    """An argparse type that reads a value as the switch reads a request's (control's mac_arg,
    vlan_arg): one the switch would refuse is a command line it cannot parse (exit 2, the
    argument named), said before any switch is asked, and the rules are the switch's own."""
    def parse(value: str):
        from tapswitch import control
        try:
            return read(control)(value)
        except control.ControlError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


mac = _as_the_switch_reads(lambda control: control.mac_arg)                 # fdb --mac: any MAC
entry_mac = _as_the_switch_reads(lambda control: control.unicast_mac_arg)   # fdb add|del: an entry's


def vlan(value: str) -> int:
    """A --vlan, 1-4094, as the switch reads one (control.vlan_arg); exit 2 if it is none."""
    try:
        value = int(value)
    except ValueError:
        pass                # vlan_arg refuses it, saying what a VLAN is
    return _as_the_switch_reads(lambda control: control.vlan_arg)(value)


# `tapswitch --help` after the list of commands: what the README says of them all (its
# Quickstart and Command line), for a user who has only the command at hand.
EPILOG = f"""\
Run `tapswitch COMMAND --help` for a command's options. Without -c,
`tapswitch run` runs the built-in demo: namespaces ts-demo-a (198.18.0.1/24)
and ts-demo-b (198.18.0.2/24), joined by the switch.

ports, fdb and reload talk to a running switch: the one on -s SOCKET, else
the control socket of -c FILE's config, else the only switch running (its
socket in {SOCKET_DIR}/).

Exit codes: {EXIT_OK} success (run: a clean stop); {EXIT_CONFIG} a configuration error, or a
command line it cannot parse (nothing created, nothing changed); {EXIT_FAILURE} a
runtime failure, said in one line.
"""


class Parser(argparse.ArgumentParser):
    """argparse's parser, but --help and --version, written to stdout, fail as any output does
    (main(): a reader gone, exit 141; a full disk, exit 1 saying so), where argparse let every
    OSError of its writes pass and exited 0 with the text lost. Its usage errors, on stderr,
    still go unsaid if stderr fails: there is nowhere left to say it."""

    def _print_message(self, message, file=None):
        if message and file is sys.stdout:
            file.write(message)
            file.flush()         # here, inside main()'s handling, not at the exit parse_args makes
            return
        super()._print_message(message, file)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tapswitch", description="A userspace L2 learning switch whose ports are TAP devices.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The version tapswitch_build_info exports.
    p.add_argument("--version", action="version", version=f"%(prog)s {tapswitch.__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent, name, help, more=""):
        """A command whose own --help opens with the line its parent's lists, and says `more`."""
        return parent.add_parser(name, help=help, description=f"{help[0].upper()}{help[1:]}.{more and ' ' + more}")

    run = command(sub, "run", "run the switch in the foreground",
                  "Logs go to stderr. SIGTERM or SIGINT (Ctrl-C) stops it and removes every device, rule and "
                  "namespace it made; SIGHUP re-reads the config file, as `tapswitch reload` does. "
                  "Sends READY=1 to $NOTIFY_SOCKET once every port and worker is up.")
    run.add_argument("-c", "--config", type=path, help="config file (default: the built-in demo)")

    check = command(sub, "check", "validate a config file",
                    "Exit 0, or 2 with every error as FILE:LINE: key.path: message. Creates nothing.")
    check.add_argument("-c", "--config", type=path, required=True, help="the config file to validate")

    def switch_options(c, default=None):
        c.add_argument("--json", action="store_true", default=default, help="print JSON")
        c.add_argument("-s", "--socket", type=path, default=default,
                       help=f"control socket of the switch (default: -c's, else the only one running in {SOCKET_DIR}/)")
        c.add_argument("-c", "--config", type=path, default=default, help="take the control socket from this config")

    def client(name, help, more=""):
        c = command(sub, name, help, more)
        switch_options(c)
        return c

    client("ports", "show the ports of a running switch",
           "Name, state, MAC, MTU, speed, remote, queues and counters of every port, and the reason a "
           "port the last reload could not make is down, or a remote port whose IFACE came back could "
           "not be attached; then a line for each queue whose worker does not run (restarting, or held back "
           "since when, and why); --json adds each queue's counters and those queues (queues_down).")
    client("reload", "make a running switch re-read its config file (as SIGHUP does)",
           "Prints what changed. Exit 0: applied; 2: refused, nothing changed; 1: applied, but a port "
           "could not be made or another step failed (said).")
    fdb = client("fdb", "show or change the MAC table of a running switch",
                 "Without an action, the table: mac, vlan, port, age (seconds), static, sorted by port, VLAN "
                 "and MAC; --port, --vlan and --mac list only the entries that match every one given. "
                 "flush, add and del change it.")
    # The listing's filters, applied by the switch. Their own dests: flush/add/del's --port and
    # --vlan, given after the action, must not take (or lose) a value given before it.
    fdb.add_argument("--port", dest="only_port", metavar="PORT", help="only the entries behind this port")
    fdb.add_argument("--vlan", dest="only_vlan", metavar="VLAN", type=vlan, help="only the entries of this VLAN")
    fdb.add_argument("--mac", dest="only_mac", metavar="MAC", type=mac, help="only the entries of this MAC (02:00:00:00:00:10 or 02-00-00-00-00-10)")
    fdb_sub = fdb.add_subparsers(dest="action")
    flush = command(fdb_sub, "flush", "forget learned entries (all, or one port's); static entries stay")
    flush.add_argument("--port", help="only this port's entries")
    add = command(fdb_sub, "add", "add a static entry (kept until the switch stops, or a reload takes its port or VLAN away)",
                  "It is never aged, moved or flushed; a reload that makes its port a mirror's monitor port, or "
                  "gives another port of its VLAN its MAC (`mac:`), removes it too. `static_macs:` in the config "
                  "keeps one for good. A MAC that another port of the VLAN has, by `mac:` or now (the MAC "
                  "`tapswitch ports` shows: a random one, its remote's, or the one its host set), is refused: "
                  "that port's frames would go to this one.")
    add.add_argument("mac", type=entry_mac, help="as the config writes one: 02:00:00:00:00:10 or 02-00-00-00-00-10")
    add.add_argument("--port", required=True, help="the port the MAC is behind")
    add.add_argument("--vlan", type=vlan, help="default: the port's untagged VLAN")
    delete = command(fdb_sub, "del", "remove an entry, static or learned",
                     "Without --vlan, the MAC's entry in whatever VLAN it is (`fdb add --port P` puts it in P's "
                     "untagged VLAN); a MAC with entries in several VLANs is refused, naming them: give --vlan.")
    delete.add_argument("mac", type=entry_mac, help="as the config writes one: 02:00:00:00:00:10 or 02-00-00-00-00-10")
    delete.add_argument("--vlan", type=vlan, help="default: the VLAN of the MAC's entry, if it has one in one VLAN only")
    for sp in (flush, add, delete):
        # After the action as before it (`fdb -s S flush` or `fdb flush -s S`). SUPPRESS: an
        # option not given here leaves the one given before the action as it is.
        switch_options(sp, default=argparse.SUPPRESS)
    return p


def find_socket(args) -> str:
    """The control socket: -s, else the config's, else the only one running."""
    if args.socket:
        return args.socket
    if args.config:
        from tapswitch import config
        try:
            return config.load(args.config).switch.control.socket
        except config.ConfigError as e:
            print(e, file=sys.stderr)
            print("tapswitch: no control socket from a config with errors; fix them, or give the socket with -s",
                  file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    from tapswitch import control
    sockets = sorted(glob.glob(os.path.join(SOCKET_DIR, "*.sock")))
    # A switch killed (SIGKILL) leaves its socket: it is no running switch, to pick or to count.
    running = [path for path in sockets if control.answers(path)]
    if len(running) == 1:
        return running[0]
    if not sockets:
        raise SystemExit(f"tapswitch: no switch is running (no socket in {SOCKET_DIR}); give one with -s")
    if not running:
        raise SystemExit(f"tapswitch: no switch is running (none answers on {', '.join(sockets)}: "
                         f"left by a switch that died); give one with -s")
    raise SystemExit(f"tapswitch: several switches are running ({', '.join(running)}); pick one with -s")


def table(rows: list[list], headers: list[str]) -> str:
    cells = [headers] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def load_config(path: str | None):
    """The validated config, or None after printing every error (FILE:LINE: key.path: message)."""
    from tapswitch import config
    try:
        return config.load(path)
    except config.ConfigError as e:
        print(e, file=sys.stderr)
        return None


class HeldReload:
    """SIGHUP's handler from main() until the switch's own takes over (Switch.start): a reload
    asked for, not the end of the process, SIGHUP's default (the imports of `run` take ~0.3 s)."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self, signum, frame) -> None:
        self.asked = True


class HeldStop:
    """SIGTERM's and SIGINT's handler from main() until the switch's own take over (Switch.start):
    a stop asked for, which start() answers by making nothing, a clean stop (exit 0), not the
    end of the process (SIGTERM's default: exit 143) or a KeyboardInterrupt (exit 130) while the
    imports of `run` run and the config loads (a config is a regular file: its load waits for
    nothing)."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self, signum, frame) -> None:
        self.asked = True


def cmd_run(args) -> int:
    from tapswitch import log
    from tapswitch.switch import StartError, Switch
    held = getattr(args, "held_reload", None) or HeldReload()
    held_stop = getattr(args, "held_stop", None) or HeldStop()
    held.asked = False           # a reload asked for before the config is read: reading it is that reload
    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_CONFIG
    log.setup(cfg.switch.log.level, cfg.switch.log.format)
    switch = Switch(cfg)
    try:
        switch.start(reload_asked=lambda: held.asked, stop_asked=lambda: held_stop.asked)
    except StartError as e:
        print(f"tapswitch: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK           # stopped while starting, or before: start() has undone what it made, or made nothing
    try:
        switch.run()
    finally:
        switch.stop()
    return EXIT_OK


def cmd_check(args) -> int:
    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_CONFIG
    n = len(cfg.ports)
    print(f"{args.config}: ok, switch {cfg.switch.name}, {n} port{'' if n == 1 else 's'}")
    return EXIT_OK


def _request(args, cmd: str, **kw):
    from tapswitch import control
    try:
        return control.request(find_socket(args), cmd, **kw)
    except control.ControlError as e:
        raise SystemExit(f"tapswitch: {e}") from None


def cmd_ports(args) -> int:
    result = _request(args, "ports")
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    headers = (["NAME", "STATE", "MAC", "MTU", "SPEED", "REMOTE", "QUEUES"] + [c.upper().replace("_", "-") for c in PORT_COLUMNS]
               + ["ERROR"])     # last: a reason has spaces, the columns before it stay one word each
    # A switch of an older tapswitch (still running after an upgrade) lacks the newer fields: "-".
    print(table([[p.get(k, "-") for k in ("name", "state", "mac", "mtu", "speed", "remote", "queues")]
                 + [p.get("counters", {}).get(c, "-") for c in PORT_COLUMNS] + [p.get("error")] for p in result],
                headers))
    # The same on every running port (worker q serves queue q of them all): said once, after
    # the table; nothing when every worker runs, or from a switch too old to say.
    for q in next((p["queues_down"] for p in result if p.get("queues_down")), []):
        print(queue_down_line(q))
    return EXIT_OK


def queue_down_line(q: dict) -> str:
    """`queue 1: worker restarting since T: why` or `queue 1: worker held back since T until
    T2: why`, as `ports` ends with for each queue whose worker does not run."""
    until = f" until {q['until']}" if q.get("until") else ""
    why = f": {q['error']}" if q.get("error") else ""
    return f"queue {q.get('queue')}: worker {q.get('state')} since {q.get('since')}{until}{why}"


FDB_HEADERS = ["MAC", "VLAN", "PORT", "AGE", "STATIC"]
OUTPUT_LINES = 16384     # lines written to stdout at once


def cmd_fdb(args) -> int:
    filters = {"port": args.only_port, "vlan": args.only_vlan, "mac": args.only_mac}
    if args.action is None:
        return fdb_listing(args, {k: v for k, v in filters.items() if v is not None})
    given = [f"--{k}" for k, v in filters.items() if v is not None]
    if given:
        print(f"tapswitch: {' '.join(given)} before `{args.action}` picks entries to list; "
              f"`fdb {args.action}` takes its own options after it", file=sys.stderr)
        return EXIT_CONFIG
    if args.action == "flush":
        result = _request(args, "fdb_flush", port=args.port)
        n = result["flushed"]
        text = f"flushed {n} entr{'y' if n == 1 else 'ies'}"
    elif args.action == "add":
        result = _request(args, "fdb_add", mac=args.mac, port=args.port, vlan=args.vlan)
        text = f"added {result['mac']} vlan {result['vlan']} on {result['port']} (static)"
    else:
        result = _request(args, "fdb_del", mac=args.mac, vlan=args.vlan)
        text = f"deleted {result['mac']} vlan {result['vlan']}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(text)
    return EXIT_OK


def fdb_listing(args, filters: dict) -> int:
    """`tapswitch fdb`: the MAC table (millions of entries, say) read as it arrives, a list of
    entries at a time; --json writes each list as it comes, the table keeps one short string
    an entry until it is sorted and written."""
    from tapswitch import control
    path = find_socket(args)
    try:
        batches = control.request_listing(path, "fdb", **filters)
        if filters:
            batches = picked_here(batches, filters, path)
        if args.json:
            write_json_list(batches, sys.stdout)
        else:
            write_fdb_table(batches, sys.stdout)
    except control.ControlError as e:
        raise SystemExit(f"tapswitch: {e}") from None
    return EXIT_OK


def picked_here(reply, filters: dict, path: str):
    """The lists of entries of `reply`, picked here by `filters` when the switch does not say it
    picked them: one started from a tapswitch older than the filters (tapswitch upgraded, the
    switch left running) ignores them and sends its whole table, never to be printed as the
    part asked for. Picked here rather than refused: a listing is no reason to restart a
    switch, which stops its traffic."""
    told = False
    for batch in reply:
        if set(filters) <= set(reply.filters or ()):
            yield batch
            continue
        if not told:
            told = True
            ignored = " ".join(f"--{k}" for k in filters if k not in (reply.filters or ()))
            print(f"tapswitch: the switch on {path} runs an older tapswitch, which ignores {ignored}: it sent "
                  f"its whole MAC table, picked here; restart the switch to have it pick the entries",
                  file=sys.stderr)
        # `filters` are as the switch reads them (MAC lower-case with colons): the parser read them so.
        yield [e for e in batch if type(e) is dict and all(e.get(k) == v for k, v in filters.items())]


def write_json_list(batches, out) -> None:
    """What print(json.dumps(all the items, indent=2)) writes, a list of items at a time."""
    first = True
    for batch in batches:
        if batch:
            out.write(("[\n" if first else ",\n") + ",\n".join(map(_indented_item, batch)))
            first = False
    out.write("[]\n" if first else "\n]\n")


_SCALAR_JSON = {str: json.encoder.encode_basestring_ascii, int: int.__repr__,
                bool: lambda v: "true" if v else "false", type(None): lambda v: "null"}


def _indented_item(item) -> str:
    """An item of a list as json.dumps(the list, indent=2) writes it: an object of scalars (an
    entry of the MAC table) by hand, three times as fast as json's encoder, which writes
    indented JSON in Python; anything else by json.dumps."""
    if type(item) is dict:
        try:
            return "  {\n" + ",\n".join([f"    {json.encoder.encode_basestring_ascii(k)}: {_SCALAR_JSON[type(v)](v)}"
                                           for k, v in item.items()]) + "\n  }"
        except (KeyError, TypeError):
            pass            # a value that is no scalar, or a key that is no string
    return json.dumps([item], indent=2)[2:-2]


# An entry of the table kept as one string, fields apart by NUL (no port name has one): it
# sorts as (port, VLAN, MAC) do (the VLAN zero-padded; it is a uint16), and it is the row's
# cells once split. Made, split and laid out by str.format in map(), not in a Python loop.
_FDB_ROW = "{port}\0{vlan:05d}\0{mac}\0{age}\0{static}\0{vlan}".format_map
_FDB_CELLS = "{2:<%d}  {5:<%d}  {0:<%d}  {3:<%d}  {4}"      # MAC, VLAN, PORT, AGE, STATIC
_FDB_FIELDS = [operator.itemgetter(k) for k in ("mac", "vlan", "port", "age")]


def _widest(field, batch) -> int:
    """The widest cell of `field` in `batch`: a number's is its least's or its greatest's."""
    values = list(map(field, batch))
    if set(map(type, values)) == {int}:
        return max(len(str(min(values))), len(str(max(values))))
    return max(map(len, map(str, values)))


def write_fdb_table(batches, out) -> None:
    """The MAC table sorted by port, VLAN and MAC, as table() lays it out: a million entries
    kept as some 100 MB of strings (dicts took a gigabyte), and written a part at a time."""
    rows: list[str] = []
    widths = [len(h) for h in FDB_HEADERS[:4]]
    for batch in batches:
        try:
            rows += map(_FDB_ROW, batch)
        except (KeyError, TypeError, ValueError):
            raise SystemExit("tapswitch: the switch sent a MAC table entry without mac, vlan, port, age "
                             "and static") from None
        if batch:
            widths = [max(w, _widest(field, batch)) for w, field in zip(widths, _FDB_FIELDS)]
    rows.sort()
    cells = _FDB_CELLS % tuple(widths)
    out.write("  ".join(h.ljust(w) for h, w in zip(FDB_HEADERS, widths + [0])).rstrip() + "\n")
    split = operator.methodcaller("split", "\0")
    for start in range(0, len(rows), OUTPUT_LINES):
        text = "\n".join(itertools.starmap(cells.format, map(split, rows[start:start + OUTPUT_LINES]))) + "\n"
        # STATIC, the last cell of a line, is str(bool): only a line's end reads "True" or "False".
        out.write(text.replace("True\n", "yes\n").replace("False\n", "no\n"))


def cmd_reload(args) -> int:
    """Exit 0: applied; 2: refused, nothing changed; 1: applied, but a port could not be made."""
    result = _request(args, "reload")
    read = result.pop("config", None)      # a switch older than this key says nothing of its file
    if args.config and not args.socket and read and os.path.realpath(args.config) != os.path.realpath(read):
        # -c only found the switch: it re-read the file it was started with, never this one.
        print(f"tapswitch: the switch re-read its own config, {read}, not {args.config}: -c only found "
              f"the switch; write the changes to {read}, or restart the switch on {args.config}",
              file=sys.stderr)
    refused = "added" not in result
    code = EXIT_CONFIG if refused else EXIT_OK if result["ok"] else EXIT_FAILURE
    if args.json:
        print(json.dumps(result, indent=2))
        return code
    for error in result["errors"]:
        print(error, file=sys.stderr)
    if refused:
        print("reload refused; the switch runs on as it was", file=sys.stderr)
        return code
    changes = ", ".join(f"{what} {' '.join(names)}" for what, names in result.items()
                        if what in ("added", "removed", "remade", "updated", "failed") and names)
    print(f"reloaded: {changes or 'no port changed'}")
    return code


COMMANDS = {"run": cmd_run, "check": cmd_check, "ports": cmd_ports, "fdb": cmd_fdb, "reload": cmd_reload}


def open_closed_stdio() -> None:
    """Give a standard descriptor that is closed (`tapswitch run 2>&-`, a daemon started with
    closed fds) /dev/null, as a daemon's own are: Python made its sys.stderr None (the log's
    stream), and the first file opened since would be that descriptor: the switch's log lines,
    a worker's stderr, written into a lock file or a TAP."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)       # the lowest free descriptor: fd, as 0..fd-1 are open now
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)                # the workers' too
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


class OutputFailed(Exception):
    """Standard output could not be written, for another reason than a reader gone: a full
    disk, an I/O error (`tapswitch fdb > FILE`)."""


class Output:
    """sys.stdout while a command other than `run` runs: a write or flush that fails raises
    OutputFailed, which main() says in one line (exit 1), where Python printed the OSError's
    traceback. A reader gone (BrokenPipeError) is let through: main() ends as SIGPIPE would."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self._written(self.stream.write, text)

    def flush(self) -> None:
        self._written(self.stream.flush)

    def _written(self, step, *args):
        try:
            return step(*args)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputFailed(e.strerror or str(e)) from None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def output_to_nowhere(stdout) -> None:
    """What is left in stdout's buffer goes nowhere: Python's flush at exit would say it failed.
    A stdout that is no file (cli.main called in a process that redirects it) has no such flush."""
    try:
        fd = stdout.fileno()
    except (OSError, ValueError):
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)


def main(argv: list[str] | None = None) -> int:
    open_closed_stdio()
    stdout = sys.stdout
    sys.stdout = Output(stdout)      # --help and --version print, and exit, from parse_args
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        if command == "run":
            sys.stdout = stdout      # the switch prints nothing on stdout: its errors are no output's
            args.held_reload = HeldReload()
            signal.signal(signal.SIGHUP, args.held_reload)
            args.held_stop = HeldStop()
            signal.signal(signal.SIGTERM, args.held_stop)
            signal.signal(signal.SIGINT, args.held_stop)
        code = COMMANDS[command](args)
        sys.stdout.flush()       # here, where a closed pipe is caught, not at exit
        return code
    except KeyboardInterrupt:
        return 128 + 2    # Ctrl-C of a client (a long listing, say): no traceback. `run` holds it: HeldStop
    except BrokenPipeError:
        if command == "run":
            raise                # the switch prints nothing on stdout: this one is no reader gone
        # Our reader went (`tapswitch fdb | head`): end as a tool killed by SIGPIPE does, quietly.
        output_to_nowhere(stdout)
        return 128 + signal.SIGPIPE
    except OutputFailed as e:
        # A full disk or an I/O error under `tapswitch fdb > FILE`: what was asked may have been
        # done (a flush, a reload), but its output is lost, or cut short: a runtime failure.
        print(f"tapswitch: cannot write the output: {e}", file=sys.stderr)
        output_to_nowhere(stdout)
        return EXIT_FAILURE
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
