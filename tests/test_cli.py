"""The command line's own options and help (the commands are tested with what they drive)."""

import argparse
import errno
import io
import os
import subprocess
import sys

import pytest

import tapswitch
from tapswitch import cli, config, control


def test_version_prints_the_version_build_info_exports(capsys):
    r = subprocess.run([sys.executable, "-m", "tapswitch", "--version"], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"tapswitch {tapswitch.__version__}\n", "")
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"tapswitch {tapswitch.__version__}\n"


def commands(parser=None, prefix=""):
    """{"run": (its parser, the line `tapswitch --help` lists for it), ..., "fdb flush": ...}"""
    out = {}
    for action in (parser or cli.build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out[prefix + name] = (sub, lines[name])
                out.update(commands(sub, f"{prefix}{name} "))
    return out


@pytest.mark.parametrize("command", sorted(commands()))
def test_a_commands_own_help_says_what_it_does(command):
    """`tapswitch fdb --help` opened with its usage and went straight to the options: what
    the command does was only in the list of `tapswitch --help`."""
    parser, line = commands()[command]
    assert parser.description is not None, f"tapswitch {command} --help has no description"
    assert parser.description.startswith(line[0].upper() + line[1:] + ".")
    assert parser.description in " ".join(parser.format_help().split("\n\n", 2)[1].split())


def test_the_help_says_what_run_runs_without_c_how_clients_find_the_switch_and_the_exit_codes():
    text = " ".join(cli.build_parser().format_help().split())
    demo = config.load(None)
    for port in demo.ports:
        assert f"{port.netns} ({port.addresses[0]})" in text
    assert "-s SOCKET, else the control socket of -c FILE's config, else the only switch running" in text
    assert f"socket in {cli.SOCKET_DIR}/" in text
    assert (f"Exit codes: {cli.EXIT_OK} success (run: a clean stop); {cli.EXIT_CONFIG} a configuration error, "
            f"or a command line it cannot parse (nothing created, nothing changed); {cli.EXIT_FAILURE} a "
            f"runtime failure, said in one line.") in text


@pytest.mark.parametrize("argv, said", [
    (["fdb", "add", "02:00:00:00:00", "--port", "p0"], "argument mac: not a MAC address: '02:00:00:00:00'"),
    (["fdb", "add", "01:00:5e:00:00:01", "--port", "p0"], "argument mac: 01:00:5e:00:00:01 is not a unicast address"),
    (["fdb", "add", "02:00:00:00:00:10", "--port", "p0", "--vlan", "4095"], "argument --vlan: VLAN must be 1-4094, not 4095"),
    (["fdb", "del", "zz:00:00:00:00:10"], "argument mac: not a MAC address: 'zz:00:00:00:00:10'"),
    (["fdb", "del", "00:00:00:00:00:00"], "argument mac: 00:00:00:00:00:00 is not a unicast address"),
    (["fdb", "del", "02:00:00:00:00:10", "--vlan", "0"], "argument --vlan: VLAN must be 1-4094, not 0"),
    (["fdb", "del", "02:00:00:00:00:10", "--vlan", "one"], "argument --vlan: VLAN must be 1-4094, not 'one'"),
    (["fdb", "--vlan", "5000"], "argument --vlan: VLAN must be 1-4094, not 5000"),
    (["fdb", "--mac", "02:00:00:00:00:1"], "argument --mac: not a MAC address: '02:00:00:00:00:1'"),
])
def test_an_fdb_mac_or_vlan_the_switch_would_refuse_exits_2_naming_it_before_any_switch_is_asked(
        tmp_path, capsys, argv, said):
    """A command line it cannot parse is exit 2, nothing changed: `fdb add|del` with a MAC that
    is none (or no entry's: not unicast) or a VLAN out of 1-4094 went to the switch, which
    refused it, and exited 1 as a runtime failure; with no switch at -s, 1 for the socket."""
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "-s", str(tmp_path / "no.sock")])
    err = capsys.readouterr().err
    assert e.value.code == cli.EXIT_CONFIG, err
    assert err.splitlines()[-1].endswith(f": error: {said} (six hex octets, as in 02:00:00:00:00:10 or "
                                         f"02-00-00-00-00-10)" if "not a MAC" in said else f": error: {said}"), err


def test_output_that_cannot_be_written_is_one_line_and_exit_1_not_a_traceback(tmp_path):
    """`tapswitch check -c FILE > /dev/full` (a full disk, an I/O error): the OSError's
    traceback, from the print or from the flush. The reason in one line, exit 1; nothing from
    Python's own flush at exit."""
    path = tmp_path / "sw.yaml"
    path.write_text("switch: {name: sw0}\nports: [{name: p0}]\n")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "tapswitch", "check", "-c", str(path)],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (cli.EXIT_FAILURE, "tapswitch: cannot write the output: No space left on device\n")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["fdb", "add", "--help"]])
def test_help_or_version_that_cannot_be_written_is_one_line_and_exit_1_not_a_silent_0(argv):
    """argparse printed --help and --version and let an OSError pass unsaid: on a full disk
    `tapswitch --version > FILE` left FILE empty and exited 0, as if it had been written."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "tapswitch", *argv],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=30)
    assert (r.returncode, r.stderr) == (cli.EXIT_FAILURE, "tapswitch: cannot write the output: No space left on device\n")


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_help_or_version_into_a_pipe_whose_reader_went_ends_as_sigpipe_would(argv):
    """`tapswitch --help | head -1` with the reader gone before the write: exit 141, quietly,
    as `tapswitch fdb` in the same pipe ends; argparse let the write's error pass, exit 0."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run([sys.executable, "-m", "tapswitch", *argv],
                           stdout=write, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write)
    assert (r.returncode, r.stderr) == (128 + 13, "")


class FullOutput(io.StringIO):
    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("argv", [["ports"], ["ports", "--json"], ["fdb"], ["fdb", "--json"], ["fdb", "flush"],
                                  ["reload"], ["fdb", "add", "02:00:00:00:00:10", "--port", "p0"]])
def test_a_clients_output_that_cannot_be_written_is_one_line_and_exit_1(monkeypatch, capsys, argv):
    answers = {"ports": [{"name": "p0", "state": "up", "counters": {}, "queues_down": []}],
               "fdb": [{"mac": "02:00:00:00:00:10", "vlan": 1, "port": "p0", "age": 3, "static": False}],
               "fdb_flush": {"flushed": 1}, "fdb_add": {"mac": "02:00:00:00:00:10", "vlan": 1, "port": "p0"},
               "reload": {"ok": True, "errors": [], "added": [], "removed": [], "remade": [], "updated": [],
                          "failed": []}}
    monkeypatch.setattr(cli, "_request", lambda args, cmd, **kw: answers[cmd])
    monkeypatch.setattr(cli, "find_socket", lambda args: "/nonexistent.sock")

    class Listing(list):
        filters = None
    monkeypatch.setattr(control, "request_listing", lambda path, cmd, **kw: Listing([answers[cmd]]))
    stdout = FullOutput()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert cli.main(argv) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == "tapswitch: cannot write the output: No space left on device\n"
    assert sys.stdout is stdout
