"""Live reload: SIGHUP / `tapswitch reload` applies only what changed; a bad config changes nothing."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tapswitch import control
from tests.integration import helpers

SENDER = os.path.join(os.path.dirname(__file__), "sendframes.py")


def base(lab, n: int = 2) -> dict:
    ports = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0",
              "addresses": [f"198.18.4.{i + 1}/24"]} for i in range(n)]
    return {"switch": {"name": lab.name("sw"), "queues": 2}, "ports": ports}


def rewrite(sw, cfg: dict) -> None:
    with open(sw.config_path, "w") as f:
        yaml.safe_dump(cfg, f)


def test_sighup_adds_a_port_while_a_running_ping_loses_nothing(lab):
    cfg = base(lab)
    sw = lab.switch(cfg)
    a = cfg["ports"][0]["netns"]
    ping = subprocess.Popen(["ip", "netns", "exec", a, "ping", "-i", "0.02", "-c", "200", "-W", "1", "198.18.4.2"],
                            stdout=subprocess.PIPE, text=True)
    lab.procs.append(ping)
    time.sleep(1)
    new_port = {"name": lab.name("p2"), "netns": lab.name("c2"), "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
    lab.namespaces.append(new_port["netns"])
    lab.links.append(new_port["name"])
    cfg["ports"].append(new_port)
    rewrite(sw, cfg)
    sw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not sw.events("config.reloaded"):
        assert time.monotonic() < deadline, sw.log()
        time.sleep(0.05)
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert helpers.ping(new_port["netns"], "198.18.4.1")
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    assert sw.events("config.reloaded")[-1]["added"] == [new_port["name"]]
    # The link events of its TAP's making (down, then up) came after it was up: no false alarm.
    assert not [e for e in sw.events("port.down") if e["port"] == new_port["name"]], sw.log()


@pytest.mark.parametrize("backend", ["", "uring", "readwrite"])
def test_workers_replaced_by_reloads_lose_no_frame(lab, monkeypatch, backend):
    """A reload that adds or removes a port replaces every worker. Each is asked to stop
    (SIGTERM): it forwards the frames it has read -- io_uring's multishot reads take frames
    off the queues ahead of the worker -- leaves the rest queued for the next one and exits 0.
    A ping every 2 ms across a dozen reloads or more (at least 8 on a busy machine) loses nothing (auto: io_uring with burst reads;
    uring: multishot reads on this kernel; readwrite).
    The new worker goes once the old one says it has drained, not once it has exited."""
    monkeypatch.setenv("TAPSWITCH_IO", backend)
    cfg = base(lab)
    sw = lab.switch(cfg)
    extra = {"name": lab.name("p2"), "netns": lab.name("c2"), "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
    lab.namespaces.append(extra["netns"])
    lab.links.append(extra["name"])
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    ping = subprocess.Popen(["ip", "netns", "exec", cfg["ports"][0]["netns"], "ping", "-q", "-i", "0.002",
                             "-c", "5000", "-W", "1", "198.18.4.2"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(ping)
    reloads = 0
    while ping.poll() is None:
        if cfg["ports"][-1] is extra:
            cfg["ports"].pop()
        else:
            cfg["ports"].append(extra)
        rewrite(sw, cfg)
        assert sw.cli("reload").stdout.startswith("reloaded:"), sw.log()
        reloads += 1
    out, _ = ping.communicate(timeout=30)
    assert reloads >= 8, out
    assert not sw.events("port.down"), sw.events("port.down")     # (test_link.py: late events of a TAP gone)
    assert len(sw.events("workers.replaced")) == reloads
    assert re.search(r"\b5000 packets transmitted, 5000 received", out), out
    # Every worker stopped as asked, none by SIGKILL after the grace, none with an error, and
    # each said it had drained: its queue's new worker went before it had exited.
    assert not sw.events("worker.stop_timeout") and not sw.events("worker.stopped"), sw.log()
    drained = sw.events("worker.drained")
    assert len(drained) == 2 * reloads and {e["queue"] for e in drained} == {0, 1}, sw.log()


def test_reload_removes_a_port_its_device_and_its_namespace(lab):
    cfg = base(lab, 3)
    sw = lab.switch(cfg)
    gone = cfg["ports"].pop()
    rewrite(sw, cfg)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: removed {gone['name']}"
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    assert not helpers.link_exists(gone["name"])
    assert gone["netns"] not in helpers.netns_list()
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


def test_a_namespace_it_made_stays_while_a_port_names_it_by_its_path(lab):
    """A port may name the namespace another port's name made by its path: a reload that removed
    the other port took the namespace away under it (its TAP went with it)."""
    cfg = base(lab, 3)
    made = cfg["ports"][0]["netns"]
    cfg["ports"][1].update(netns=f"/run/netns/{made}", ifname="eth1")
    sw = lab.switch(cfg)
    gone = cfg["ports"].pop(0)
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: removed {gone['name']}"
    time.sleep(1.5)                  # a tick of the control loop: a TAP that went is marked gone
    assert made in helpers.netns_list()
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
    assert helpers.ping(cfg["ports"][1]["netns"], "198.18.4.2")
    cfg["ports"].pop(0)
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: removed {lab.name('p1')}"
    assert made not in helpers.netns_list()     # no port names it now, by name or by path
    assert sw.stop() == 0


def test_a_port_remade_while_its_old_device_lingers_waits_for_it(lab):
    """A remade port's old TAP goes only with the last copy of its queues, and a worker killed
    with io_uring keeps copies a moment after it dies: the reload waits for the device to go,
    then makes the port again (it used to fail: "a device named eth9 already exists")."""
    cfg = base(lab, 2)
    cfg["ports"][1]["ifname"] = "eth9"
    sw = lab.switch(cfg)
    held = helpers.hold_queue(sw.proc.pid, "eth9")
    threading.Timer(0.5, os.close, (held,)).start()        # let go of it in half a second
    cfg["ports"][1]["addresses"] = ["198.18.4.22/24"]
    rewrite(sw, cfg)
    started = time.monotonic()
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {cfg['ports'][1]['name']}", sw.log()
    assert time.monotonic() - started >= 0.4                 # it waited for the copy to go
    assert not sw.events("port.add_failed")
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.22")


def test_a_port_remade_out_of_descriptors_waits_for_its_old_device_all_the_same(lab):
    """At the descriptor limit, the wait for a remade port's old TAP to go could not make its
    IPRoute (four descriptors) and took that for the device gone: the port was made again at
    once, at the limit, while the old device lingered (a copy of its queue held), and failed
    (or the switch ended: the test above). It looks on a socket of its own (one descriptor,
    which the closed queues leave) and waits for the device, as long as it lingers."""
    cfg = base(lab, 2)
    cfg["switch"]["queues"] = 1
    cfg["ports"][1]["ifname"] = "eth9"
    name = cfg["ports"][1]["name"]
    sw = lab.switch(cfg)
    held = helpers.hold_queue(sw.proc.pid, "eth9")
    try:
        cfg["ports"][1]["addresses"] = ["198.18.4.22/24"]
        rewrite(sw, cfg)
        with helpers.fds_to_spare(sw.proc.pid, 1):
            os.kill(sw.proc.pid, signal.SIGHUP)
            time.sleep(0.5)                 # the reload has closed the port and waits for its device
        time.sleep(0.5)
    finally:
        os.close(held)                      # the old device goes
    [event] = helpers.wait_for("config.reloaded", lambda: sw.events("config.reloaded"), 10.0)
    assert (event["remade"], event["failed"]) == ([name], []), event
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.22")
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_changed_address_remakes_only_that_port(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    cfg["ports"][1]["addresses"] = ["198.18.4.22/24"]
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {cfg['ports'][1]['name']}"
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.22")
    assert not helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", wait=1)


def test_a_mac_written_out_as_the_port_has_it_keeps_its_device(lab):
    """`mac:` set to the MAC `tapswitch ports` shows, to keep it across restarts: the reload made
    the port again for the same MAC (its container lost the device's routes, the switch what it
    had learned there). It updates the port; the device, its routes and its MAC stay."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.nsexec(ns, "ip", "route", "add", "198.18.5.0/24", "via", "198.18.4.1")
    ifindex = json.loads(helpers.nsexec(ns, "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]["ifindex"]
    mac = {p["name"]: p["mac"] for p in sw.cli_json("ports")}[name]
    cfg["ports"][1]["mac"] = mac
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: updated {name}"
    assert json.loads(helpers.nsexec(ns, "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]["ifindex"] == ifindex
    assert "198.18.5.0/24" in helpers.nsexec(ns, "ip", "route").stdout
    assert helpers.link_mac(ns, "eth0") == mac
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


def test_invalid_config_changes_nothing_and_says_where(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    good = open(sw.config_path).read()
    with open(sw.config_path, "w") as f:
        f.write(good.replace("queues: 2", "queues: 2\n  colour: blue"))
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert re.search(re.escape(sw.config_path) + r":\d+: switch\.colour: ", r.stderr), r.stderr
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    failed = sw.events("config.reload_failed")
    assert failed and "switch.colour" in failed[-1]["errors"][0]


def test_a_config_yaml_cannot_read_changes_nothing_and_says_its_line_and_key(lab):
    """A key YAML reads as a boolean (`on:`) was 'switch[1]: keys should be strings' at the line of
    `switch:`; a number too long to build was 'FILE:0: -:', and told the user to call a Python function."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    good = open(sw.config_path).read()
    assert good.endswith("  queues: 2\n"), good      # safe_dump sorts: switch's keys come last
    line = good.count("\n") + 1
    for added, said in (("  on: 1\n", "switch.on: unknown key: YAML reads on as a boolean"),
                        ("  queue_len: " + "9" * 5000 + "\n",
                         "switch.queue_len: YAML: cannot read '9999999999999999999999999999999999999999...' as an "
                         "integer: 5000 digits, more than an integer may have (4300)")):
        with open(sw.config_path, "w") as f:
            f.write(good + added)
        r = helpers.sh(sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket, check=False)
        assert r.returncode == 2, r
        assert r.stderr.startswith(f"{sw.config_path}:{line}: {said}"), r.stderr
        assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
        assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


def test_a_reload_while_the_config_is_being_written_waits_for_it_or_changes_nothing(lab):
    """A config written in place (an editor, `cat > FILE`, a copy) is cut where its writer has got
    to, and cut there it may be valid: here the second port is not written yet, which a reload
    would remove. A reload waits for the writer to close the file and reads it whole; one still
    open after 2 s is refused, and the switch runs on as it was."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    whole = yaml.safe_dump({"switch": cfg["switch"], "ports": cfg["ports"]}, sort_keys=False)
    cut = whole.index("- name: " + cfg["ports"][1]["name"])      # a valid config of the first port
    writer = open(sw.config_path, "w")
    try:
        writer.write(whole[:cut])
        writer.flush()
        r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "another process has it open for writing" in r.stderr, r.stderr
        assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
        assert helpers.link_exists("eth0", cfg["ports"][1]["netns"])
        threading.Timer(0.5, lambda: (writer.write(whole[cut:]), writer.close())).start()
        assert sw.cli("reload").stdout.strip() == "reloaded: no port changed", sw.log()
    finally:
        writer.close()
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


def test_a_reload_asked_for_while_another_runs_answers_for_the_config_as_it_was_asked_about(lab):
    """`tapswitch reload` while a reload (SIGHUP) is under way: the answer is that of a reload that
    read the config after the request was made -- here refused -- not that of the one under way,
    which read the config before it was rewritten (the client was told "reloaded: added ...",
    exit 0, for a config the switch then refused)."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    more = [{"name": lab.name(f"p{i}"), "netns": lab.name(f"c{i}"), "ifname": "eth0"} for i in range(2, 12)]
    lab.links += [p["name"] for p in more]
    lab.namespaces += [p["netns"] for p in more]
    cfg["ports"] += more
    rewrite(sw, cfg)
    sw.proc.send_signal(signal.SIGHUP)
    helpers.wait_for("the reload under way", lambda: [e for e in sw.events("port.added")
                                                      if e["port"] == more[0]["name"]], every=0.005)
    cfg["switch"]["queues"] = 1
    rewrite(sw, cfg)
    reply = control.request(sw.socket, "reload")
    assert reply["ok"] is False and "switch.queues: cannot change while running" in reply["errors"][0], reply
    assert sw.events("config.reloaded")[-1]["added"] == [p["name"] for p in more]    # the one under way
    assert len(sw.events("config.reload_failed")) == 1


def test_a_reload_given_another_config_file_says_the_switch_read_its_own(lab):
    """`tapswitch reload -c FILE` finds the switch by FILE's socket, and the switch re-reads the
    file it was started with: given another FILE (a new version written beside the old), it said
    "reloaded: no port changed", FILE's changes unapplied and unmentioned."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    other = os.path.join(sw.dir, "other.yaml")
    with open(other, "w") as f:
        yaml.safe_dump({"switch": cfg["switch"], "ports": cfg["ports"][:1]}, f, sort_keys=False)
    r = helpers.sh(sys.executable, "-m", "tapswitch", "reload", "-c", other, check=False)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "reloaded: no port changed", r
    assert f"the switch re-read its own config, {sw.config_path}, not {other}" in r.stderr, r.stderr
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    r = helpers.sh(sys.executable, "-m", "tapswitch", "reload", "-c", sw.config_path, check=False)
    assert (r.returncode, r.stderr) == (0, ""), r        # its own file: nothing to say


def starting(lab):
    """A switch of 16 ports with addresses, started and answering on its control socket, its
    ports still being made: (switch, config)."""
    cfg = base(lab, 16)
    for i, port in enumerate(cfg["ports"]):
        port["addresses"] = [f"198.18.4.{i + 1}/24"]
    sw = lab.switch(cfg, start=False)
    sw.start(expect_ready=False)
    helpers.wait_for("the control socket", lambda: os.path.exists(sw.socket), every=0.002)
    return sw, cfg


def test_a_reload_asked_for_while_the_switch_starts_is_done_once_it_has_started(lab):
    """The control socket answers before the ports are made; a `tapswitch reload` then is done
    once the switch is ready, and answered. (It waited 30 s for a reload that never came, then
    said "it goes on".)"""
    sw, cfg = starting(lab)
    assert not sw.events("switch.ready"), "started too soon to ask while it starts"
    asked = time.monotonic()
    reply = control.request(sw.socket, "reload")
    assert reply["ok"] and reply["added"] == reply["removed"] == reply["remade"] == [], reply
    assert time.monotonic() - asked < 10
    events = [e["event"] for e in sw.events()]
    assert events.index("switch.ready") < events.index("config.reloaded")


def test_a_reload_asked_for_that_a_stop_comes_before_is_answered_at_once(lab):
    """A `tapswitch reload` asked for while another runs waits for the next; a stop that comes
    before it ends the switch with no next reload. The command waited until the switch had
    gone, and said "the switch ... closed the connection"; it is told the switch is stopping."""
    cfg = base(lab, 2)
    cfg["ports"][1]["ifname"] = "eth9"
    sw = lab.switch(cfg)
    held = helpers.hold_queue(sw.proc.pid, "eth9")      # the reload waits for the old device to go
    try:
        cfg["ports"][1]["addresses"] = ["198.18.4.22/24"]
        rewrite(sw, cfg)
        sw.proc.send_signal(signal.SIGHUP)
        helpers.wait_for("the reload's wait for the old device", lambda: sw.events("workers.replaced"))
        client = subprocess.Popen([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lab.procs.append(client)
        time.sleep(0.6)                 # its request has reached the switch
        sw.proc.send_signal(signal.SIGTERM)
    finally:
        os.close(held)
    out, err = client.communicate(timeout=60)
    assert (client.returncode, out, err) == (
        1, "", "tapswitch: the switch is stopping\n"), sw.log()
    assert sw.proc.wait(30) == 0
    assert len(sw.events("config.reloaded")) == 1, sw.log()      # the first only


def test_a_sighup_while_the_switch_starts_reloads_once_it_has_started(lab):
    """`kill -HUP` while the switch makes its ports, after it read its config, which has changed
    since: the reload comes once the switch is ready, and applies the change. (SIGHUP was
    ignored while starting: the switch ran on the config as it was read, until the next one.)"""
    sw, cfg = starting(lab)
    removed = cfg["ports"].pop()
    rewrite(sw, cfg)
    sw.proc.send_signal(signal.SIGHUP)
    assert not sw.events("switch.ready"), "started too soon to signal while it starts"
    helpers.wait_for("config.reloaded", lambda: sw.events("config.reloaded"))
    events = [e["event"] for e in sw.events()]
    assert events.index("switch.ready") < events.index("config.reloaded")
    assert sw.events("config.reloaded")[0]["removed"] == [removed["name"]]
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]


SIGHUP_EARLY = os.path.join(os.path.dirname(__file__), "..", "sighup_early.py")


def test_a_sighup_before_the_switch_starts_starting_reloads_once_it_has_started(lab, tmp_path):
    """`kill -HUP` once the config is read, before the switch took SIGHUP over (it does so as it
    starts, after ~0.3 s of imports): the reload comes once the switch is ready, and applies the
    change. (SIGHUP's default action ended the process, exit -1, nothing said.)"""
    cfg = base(lab, 3)
    changed = tmp_path / "changed.yaml"
    sw = lab.switch(cfg, start=False, wrapper=(sys.executable, SIGHUP_EARLY, str(changed)))
    removed = cfg["ports"].pop()
    changed.write_text(yaml.safe_dump(cfg))
    sw.start()
    helpers.wait_for("config.reloaded", lambda: sw.events("config.reloaded"))
    events = [e["event"] for e in sw.events()]
    assert events.index("switch.ready") < events.index("config.reloaded")
    assert sw.events("config.reloaded")[0]["removed"] == [removed["name"]]
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    assert sw.stop() == 0


def test_a_sighup_while_the_switch_is_imported_is_no_end_and_no_reload(lab):
    """`kill -HUP` during the imports, before the config is read: the config the start reads
    is the one a reload would, so there is none; the switch starts (it was ended, exit -1)."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg, wrapper=(sys.executable, SIGHUP_EARLY, "imports"))
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    time.sleep(0.5)
    assert not sw.events("config.reloaded") and not sw.events("config.reload_failed")
    assert sw.stop() == 0


def test_a_setting_fixed_at_start_is_refused(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    cfg["switch"]["queues"] = 1
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    line = open(sw.config_path).read().splitlines().index("  queues: 1") + 1
    assert f"{sw.config_path}:{line}: switch.queues: cannot change while running" in r.stderr, r.stderr
    assert all(p["queues"] == 2 for p in sw.cli_json("ports"))
    assert sw.events("config.reload_failed")[-1]["errors"][0].startswith(f"{sw.config_path}:{line}: ")


def test_a_port_whose_device_went_is_made_again_by_reload(lab):
    """A port's TAP deleted in its namespace: the port goes down (and stays so); the next reload
    makes it again, as the config still asks for it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.sh("ip", "-n", ns, "link", "del", "eth0")
    helpers.wait_for("port.gone", lambda: [e for e in sw.events("port.gone") if e["port"] == name])
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "down"]
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=5)
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"      # and only once


def test_a_gone_ports_queue_counts_one_rx_error_and_no_more_after_worker_restarts(lab):
    """Its TAP deleted, the port's queue fails its worker's read: one rx_errors, and it is polled
    no more. A worker restarted since (SIGKILL) is not handed that dead queue again, so the
    count stays 1 however often workers restart."""
    cfg = base(lab, 2)
    cfg["switch"]["queues"] = 1
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]

    def rx_errors():
        return {p["name"]: p["counters"]["rx_errors"] for p in sw.cli_json("ports")}[name]

    helpers.sh("ip", "-n", ns, "link", "del", "eth0")
    helpers.wait_for("port.gone", lambda: [e for e in sw.events("port.gone") if e["port"] == name])
    helpers.wait_for("rx_errors 1", lambda: rx_errors() == 1)
    for restart in (1, 2):
        [pid] = sw.worker_pids()
        os.kill(pid, signal.SIGKILL)
        helpers.wait_for(f"restart {restart}", lambda: len(sw.events("worker.restarted")) == restart
                         and len(sw.worker_pids()) == 1 and sw.worker_pids() != [pid])
        time.sleep(1.0)                             # the new worker's first polls are long done
        assert rx_errors() == 1, sw.log()
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {name}"
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)


def gone_reason(sw, port: str) -> str:
    return helpers.wait_for(f"{port} gone", lambda: [e["reason"] for e in sw.events("port.gone")
                                                     if e["port"] == port])[-1]


def test_a_namespace_it_made_deleted_by_the_user_downs_the_port_and_reload_remakes_it(lab):
    """`ip netns del` of a namespace the switch made: the port's TAP keeps it alive, unseen, so no
    link event comes; the port goes down all the same, saying why. The user's namespace of the
    same name, added again, is the user's: the reload makes the port in it, and the stop leaves it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.sh("ip", "netns", "del", ns)
    assert gone_reason(sw, name) == f"its namespace {ns} was deleted"
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "down"]
    helpers.sh("ip", "netns", "add", ns)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    assert sw.stop() == 0
    assert ns in helpers.netns_list()               # the user's, not removed
    assert ns not in {e["netns"] for e in sw.events("netns.removed")}


def port_mac(sw, name: str) -> str:
    return {p["name"]: p["mac"] for p in sw.cli_json("ports")}[name]


@pytest.mark.parametrize("whose", ["the switch's", "its host's"])
def test_a_port_remade_by_a_reload_of_a_device_setting_keeps_its_mac_and_its_peers_reach_it_at_once(lab, whose):
    """A port without `mac:` remade by a reload (here its `mtu`) keeps the MAC it had: the switch's
    random one, or the one its host set and the switch followed. Nothing tells its peers of a new
    one: with one, the peer's neighbour entry (reachable, just confirmed) kept the old MAC, and
    its pings went unanswered until that entry went stale, 15 s and more. A `mac:` given later
    is the one it gets then."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    a, (name, ns) = cfg["ports"][0]["netns"], (cfg["ports"][1]["name"], cfg["ports"][1]["netns"])
    if whose == "its host's":
        helpers.nsexec(ns, "ip", "link", "set", "eth0", "address", "02:5e:00:00:14:02")
        helpers.wait_for("followed", lambda: port_mac(sw, name) == "02:5e:00:00:14:02")
    mac = helpers.link_mac(ns, "eth0")
    assert port_mac(sw, name) == mac
    assert helpers.ping(a, "198.18.4.2")            # the peer's neighbour entry: this MAC, reachable
    cfg["ports"][1]["mtu"] = 1400
    rewrite(sw, cfg)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert helpers.link_mtu(ns, "eth0") == 1400     # a new device...
    assert helpers.link_mac(ns, "eth0") == mac and port_mac(sw, name) == mac, sw.log()     # ...with the MAC it had
    assert helpers.ping(a, "198.18.4.2"), helpers.nsexec(a, "ip", "neigh").stdout    # no flush of the peer's cache
    cfg["ports"][1]["mac"] = "02:5e:00:00:14:03"
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {name}"
    assert helpers.link_mac(ns, "eth0") == "02:5e:00:00:14:03" == port_mac(sw, name)


def test_a_port_whose_namespace_was_deleted_and_made_again_keeps_its_mac_once_a_reload_remakes_it(lab):
    """A container restarted (its namespace deleted and made again, `port.gone`), then a reload:
    the port is made again with the MAC it had, and its peer reaches it at once, its neighbour
    cache as it was."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    a, (name, ns) = cfg["ports"][0]["netns"], (cfg["ports"][1]["name"], cfg["ports"][1]["netns"])
    mac = helpers.link_mac(ns, "eth0")
    assert helpers.ping(a, "198.18.4.2")
    helpers.sh("ip", "netns", "del", ns)
    assert gone_reason(sw, name) == f"its namespace {ns} was deleted"
    helpers.sh("ip", "netns", "add", ns)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert helpers.link_mac(ns, "eth0") == mac and port_mac(sw, name) == mac, sw.log()
    assert helpers.ping(a, "198.18.4.2"), helpers.nsexec(a, "ip", "neigh").stdout


def test_a_port_remade_does_not_keep_a_mac_that_the_reload_makes_static_on_another_port(lab):
    """The MAC a port without `mac:` had is not given back when the same reload makes it static
    on another port in its VLAN (check refuses a port's `mac` there): the entry, never moved by
    learning, sent the port's frames to the other port, and its peer reached it no more. A
    random one then: the peer, its neighbour cache flushed, reaches it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    a, (name, ns) = cfg["ports"][0]["netns"], (cfg["ports"][1]["name"], cfg["ports"][1]["netns"])
    mac = helpers.link_mac(ns, "eth0")
    assert helpers.ping(a, "198.18.4.2")
    cfg["ports"][1]["mtu"] = 1400
    cfg["static_macs"] = [{"mac": mac, "port": cfg["ports"][0]["name"]}]
    rewrite(sw, cfg)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert helpers.link_mtu(ns, "eth0") == 1400
    assert helpers.link_mac(ns, "eth0") != mac and port_mac(sw, name) == helpers.link_mac(ns, "eth0"), sw.log()
    helpers.nsexec(a, "ip", "neigh", "flush", "all")     # it has another MAC now
    assert helpers.ping(a, "198.18.4.2"), helpers.nsexec(a, "ip", "neigh").stdout


def test_two_ports_made_in_one_reload_that_had_the_same_mac_do_not_both_get_it(lab):
    """A port taken out (its MAC kept for it), its container's MAC then set on another port's
    TAP (moved there: the switch follows it), and one reload that puts the first back and
    remakes the other (its `mtu`): both got that MAC, and the switch learned it on whichever
    sent last. The port that had it last keeps it, and its peer reaches it at once; the other
    gets a random one."""
    cfg = base(lab, 3)
    sw = lab.switch(cfg)
    a, (one, one_ns), (two, two_ns) = (cfg["ports"][0]["netns"], *((p["name"], p["netns"]) for p in cfg["ports"][1:]))
    mac = helpers.link_mac(one_ns, "eth0")
    taken_out = cfg["ports"].pop(1)
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: removed {one}"
    helpers.nsexec(two_ns, "ip", "link", "set", "eth0", "address", mac)
    helpers.wait_for("followed", lambda: port_mac(sw, two) == mac)
    assert helpers.ping(a, "198.18.4.3")
    cfg["ports"].insert(1, taken_out)
    cfg["ports"][2]["mtu"] = 1400
    rewrite(sw, cfg)
    r = sw.cli("reload")
    assert r.returncode == 0, (r, sw.log())
    assert helpers.link_mtu(two_ns, "eth0") == 1400
    assert port_mac(sw, two) == helpers.link_mac(two_ns, "eth0") == mac, sw.log()
    assert port_mac(sw, one) == helpers.link_mac(one_ns, "eth0") != mac, sw.log()
    assert helpers.ping(a, "198.18.4.3"), helpers.nsexec(a, "ip", "neigh").stdout
    helpers.nsexec(a, "ip", "neigh", "flush", "all")
    assert helpers.ping(a, "198.18.4.2") and helpers.ping(a, "198.18.4.3")


NETNS_DELETED_IN_RELOAD = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "netns_deleted_in_reload.py"))


@pytest.mark.parametrize("added_again", [False, True])
def test_a_namespace_it_made_deleted_as_a_reload_makes_a_port_there_downs_only_the_ports_left_in_it(
        lab, monkeypatch, added_again):
    """`ip netns del` in the middle of a reload, after the reload looked for lost namespaces and
    before it makes a port in that one: the port is made in a namespace of that name -- a new
    one, or the user's after `ip netns add` -- and stays up; the port the reload did not touch,
    whose TAP is in the deleted one, goes down saying why (it stayed up, unseen, for good;
    and the one in the user's namespace went down with it). The next reload makes it again
    beside the other. In the user's namespace the TAP is moved in, not made there, so that it
    does not keep their namespace alive once they delete it."""
    trigger = os.path.join(helpers.tmpdir(), "netns-del")
    lab.dirs.append(os.path.dirname(trigger))
    monkeypatch.setenv("TAPSWITCH_TEST_NETNS_DEL", trigger)
    cfg = base(lab, 3)
    cfg["ports"][2].update(netns=cfg["ports"][1]["netns"], ifname="eth1")
    sw = lab.switch(cfg, wrapper=NETNS_DELETED_IN_RELOAD)
    (_p0, a), (p1, ns), (p2, _ns) = ((p["name"], p["netns"]) for p in cfg["ports"])
    assert helpers.ping(a, "198.18.4.2") and helpers.ping(a, "198.18.4.3")
    cfg["ports"][2]["addresses"] = ["198.18.4.4/24"]
    rewrite(sw, cfg)
    with open(trigger, "w") as f:
        f.write(f"{ns} again" if added_again else ns)
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {p2}", (r, sw.log())
    assert not os.path.exists(trigger)
    what = "replaced by another namespace of that name" if added_again else "deleted"
    assert gone_reason(sw, p1) == f"its namespace {ns} was {what}"
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "down", "up"]
    assert not [e for e in sw.events("port.gone") if e["port"] == p2], sw.log()
    assert helpers.ping(a, "198.18.4.4")
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {p1}", (r, sw.log())
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up", "up"]
    assert helpers.ping(a, "198.18.4.2") and helpers.ping(a, "198.18.4.4")
    if added_again:
        # The switch holds nothing open in the user's namespace (p2's TAP was made inside, and
        # held it): once they delete it, its ports' TAPs go, and the ports go down.
        helpers.sh("ip", "netns", "del", ns)
        helpers.wait_for("both ports down", lambda: [p["state"] for p in sw.cli_json("ports")] == ["up", "down", "down"])
        assert gone_reason(sw, p2) == "its TAP was deleted (or its namespace went)"
    assert sw.stop() == 0
    assert ns not in helpers.netns_list()           # the switch's is removed at the stop


def test_a_namespace_it_made_replaced_just_before_the_stop_is_left_to_the_user(lab):
    """Deleted and added again by the user between two of the switch's looks: the stop sees that the
    namespace at that name is not the one it made, and leaves it."""
    cfg = base(lab, 1)
    sw = lab.switch(cfg)
    ns = cfg["ports"][0]["netns"]
    helpers.sh("ip", "netns", "del", ns)
    helpers.sh("ip", "netns", "add", ns)
    sw.proc.send_signal(signal.SIGTERM)
    assert sw.stop() == 0
    assert ns in helpers.netns_list()
    assert not sw.events("netns.removed")


def test_a_port_whose_tap_its_host_moved_away_is_made_again_by_reload(lab):
    """The host moves the port's TAP into another namespace: the port goes down saying so, and the
    next reload makes it again where the config says (the moved TAP goes with the old port)."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    elsewhere = lab.netns("x", create=True)
    helpers.nsexec(ns, "ip", "link", "set", "eth0", "netns", elsewhere)
    assert gone_reason(sw, name) == "its TAP was moved to another namespace"
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "down"]
    r = sw.cli("reload")
    assert r.stdout.strip() == f"reloaded: remade {name}", (r, sw.log())
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up"]
    assert helpers.link_exists("eth0", ns) and not helpers.link_exists("eth0", elsewhere)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"


def test_ports_shows_a_port_the_last_reload_could_not_make_as_down_with_why(lab):
    """A remote port whose IFACE does not exist: /metrics says tapswitch_port_up 0, and
    `tapswitch ports` left it out, table and --json. It is listed, down, with the reload's
    reason as `error` (None for the ports that run), until a reload removes it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, nosuch = lab.name("x"), lab.name("nd")
    cfg["ports"].append({"name": name, "remote": nosuch, "speed": 100})
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and json.loads(r.stdout)["failed"] == [name], r
    [error] = json.loads(r.stdout)["errors"]
    ports = sw.cli_json("ports")
    assert [(p["name"], p["state"], p["error"]) for p in ports] == [
        (cfg["ports"][0]["name"], "up", None), (cfg["ports"][1]["name"], "up", None), (name, "down", error)]
    made, unmade = ports[0], ports[2]
    assert set(unmade) == set(made)                     # the same keys as a port that runs
    assert (unmade["mac"], unmade["mtu"], unmade["speed"], unmade["remote"], unmade["queues"]) == (
        None, 1500, 100, nosuch, 2)
    assert unmade["counters"] == dict.fromkeys(made["counters"], 0)
    assert unmade["queue_counters"] == [dict.fromkeys(made["queue_counters"][0], 0)] * 2
    header, *rows = sw.cli("ports").stdout.splitlines()
    assert header.split()[-1] == "ERROR"
    [row] = [r for r in rows if r.split()[0] == name]
    assert row.split()[1:3] == ["down", "-"] and row.endswith(error), row
    assert all(r.split()[-1] == "-" for r in rows if r != row)
    cfg["ports"].pop()
    rewrite(sw, cfg)
    assert sw.cli("reload").returncode == 0
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]


def test_a_port_that_cannot_be_made_is_reported_failed_not_added(lab):
    """Its name is taken by another device: the reload makes the rest, says which port failed
    and why, exits 1 with or without --json, and a later reload tries it again."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    taken = lab.name("p2")
    lab.links += [taken, taken + "x"]
    helpers.sh("ip", "link", "add", taken, "type", "veth", "peer", "name", taken + "x")
    cfg["ports"].append({"name": taken})                  # made beside the switch, where the name is taken
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (1, f"reloaded: failed {taken}"), r
    assert f"a device named {taken} already exists" in r.stderr, r.stderr
    event = sw.events("config.reloaded")[-1]
    assert (event["added"], event["failed"]) == ([], [taken]), event
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and json.loads(r.stdout)["failed"] == [taken], r
    helpers.sh("ip", "link", "del", taken)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {taken}"
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]



def test_a_port_a_reload_cannot_make_out_of_descriptors_is_failed_naming_it(lab):
    """One descriptor to spare: the new port's TAP takes it, and the netlink socket that sets it
    up fails (EMFILE). The reload said "[Errno 24] Too many open files", of no port; now it
    names the port and says what to do, as a start does. Nothing of the port is left, and once
    there are descriptors again the next reload makes it."""
    sw = lab.switch({"switch": {"name": lab.name("sw"), "queues": 1}, "ports": [{"name": lab.name("p0")}]})
    name = lab.name("p1")
    lab.links.append(name)
    rewrite(sw, {**sw.cfg, "ports": [*sw.cfg["ports"], {"name": name}]})
    with helpers.fds_to_spare(sw.proc.pid, 1) as limit:
        os.kill(sw.proc.pid, signal.SIGHUP)
        [event] = helpers.wait_for("config.reloaded", lambda: sw.events("config.reloaded"), 10.0)
    assert (event["failed"], event["errors"]) == ([name], [
        f"port {name}: out of file descriptors (the limit is {limit}): a port takes one for each queue, in the "
        f"switch and again in the queue's worker; raise the limit (ulimit -n, or LimitNOFILE= in the service)"]), event
    assert not helpers.link_exists(name)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {name}"
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_a_reload_that_remakes_a_port_out_of_descriptors_leaves_the_switch_running(lab):
    """One descriptor to spare, and a reload makes a port again: the wait for its old TAP to go
    opened a netlink socket and made pyroute2's IPRoute on it, which could not be made (it takes
    four), and the socket's descriptor, handed over, was left open: the reload's next open
    (/proc/self/status, the switch's capabilities) raised EMFILE out of the control loop,
    ending the switch (a traceback). The port is made again, and the switch runs on."""
    cfg = base(lab, 2)
    cfg["switch"]["queues"] = 1
    sw = lab.switch(cfg)
    name = cfg["ports"][1]["name"]
    cfg["ports"][1]["addresses"] = ["198.18.4.22/24"]
    rewrite(sw, cfg)
    with helpers.fds_to_spare(sw.proc.pid, 1):
        os.kill(sw.proc.pid, signal.SIGHUP)
        [event] = helpers.wait_for("config.reloaded", lambda: sw.events("config.reloaded"), 10.0)
        assert sw.proc.poll() is None, sw.log()
    assert (event["remade"], event["failed"]) == ([name], []), event
    assert helpers.wait_for("traffic to the port made again", lambda: helpers.ping(cfg["ports"][0]["netns"],
                                                                                   "198.18.4.22", wait=1))
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_a_port_a_reload_could_not_make_again_keeps_the_namespace_it_made(lab):
    """A reload makes a port again (its TAP went, and an address added) and cannot (IPv6 is off in
    its namespace): the namespace the switch made for it stays, with what its user put there, and
    the reload that can make the port makes it there again. (It was removed, as for a port gone
    from the config: what ran there was cut off, and the next reload made a new, empty one of that
    name.) A port whose TAP had not gone is put back as it was: the tests below."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    helpers.nsexec(ns, "ip", "link", "del", "eth0")
    helpers.wait_for("port.gone", lambda: [e for e in sw.events("port.gone") if e["port"] == name])
    made = os.stat(f"/run/netns/{ns}").st_ino
    cfg["ports"][1]["addresses"] = ["198.18.4.2/24", "fd00::2/64"]
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (1, f"reloaded: failed {name}"), r
    assert "IPv6 is disabled there" in r.stderr, r.stderr
    assert os.stat(f"/run/netns/{ns}").st_ino == made
    cfg["ports"][1]["addresses"] = ["198.18.4.2/24"]
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {name}"
    assert os.stat(f"/run/netns/{ns}").st_ino == made
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    assert sw.stop() == 0
    assert ns not in helpers.netns_list()

def vxlan_site(lab) -> dict:
    """Namespaces: sw (the switch, with vxlan device vx0 over veth und0, MTU 1500: vx0 carries
    1450 at most), out (the far end: vx0 over und1, 198.18.5.100), c0 (a container)."""
    sw, out, c0 = lab.netns("sw", create=True), lab.netns("out", create=True), lab.netns("c0", create=True)
    helpers.sh("ip", "link", "add", "und0", "netns", sw, "type", "veth", "peer", "name", "und1", "netns", out)
    for ns, here, there, dev in ((sw, "198.18.9.1", "198.18.9.2", "und0"), (out, "198.18.9.2", "198.18.9.1", "und1")):
        helpers.nsexec(ns, "ip", "addr", "add", f"{here}/24", "dev", dev)
        helpers.nsexec(ns, "ip", "link", "set", dev, "up")
        helpers.nsexec(ns, "ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dev", dev, "local", here,
                       "remote", there, "dstport", "4789")
        helpers.nsexec(ns, "ip", "link", "set", "vx0", "up")
    helpers.nsexec(out, "ip", "addr", "add", "198.18.5.100/24", "dev", "vx0")
    return {"sw": sw, "out": out, "c0": c0}


def test_a_remote_port_a_reload_cannot_make_again_is_put_back_as_it_was(lab):
    """A remote port on a vxlan device whose underlay carries 1500, given `mtu: 9000` by a reload:
    the kernel refuses that MTU on IFACE once the old port is gone. The port stayed down, its
    IFACE detached, until the next reload; it is put back as it was (its MTU, its MAC, IFACE
    attached again, forwarding), the reload says it failed and why, and the next tries again."""
    site = vxlan_site(lab)
    up = lab.name("up")
    cfg = {"switch": {"name": lab.name("sw"), "queues": 1},
           "ports": [{"name": lab.name("p0"), "netns": f"/run/netns/{site['c0']}", "ifname": "eth0",
                      "addresses": ["198.18.5.1/24"]},
                     {"name": up, "remote": "vx0"}]}
    sw = lab.switch(cfg, netns=site["sw"])
    assert helpers.ping(site["c0"], "198.18.5.100")
    before = {p["name"]: p for p in sw.cli_json("ports")}[up]
    assert (before["state"], before["mtu"]) == ("up", 1450)
    cfg["ports"][1]["mtu"] = 9000
    rewrite(sw, cfg)
    for _ in range(2):          # and the next reload tries again
        r = subprocess.run(["ip", "netns", "exec", site["sw"], sys.executable, "-m", "tapswitch", "reload",
                            "-s", sw.socket], capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout.strip()) == (1, f"reloaded: failed {up}"), (r, sw.log())
        after = {p["name"]: p for p in sw.cli_json("ports")}[up]
        assert (after["state"], after["mac"], after["mtu"], after["remote"], after["error"]) == (
            "up", before["mac"], 1450, "vx0", None), (after, sw.log())
        assert helpers.link_mtu(site["sw"], "vx0") == 1450
        assert helpers.ping(site["c0"], "198.18.5.100"), sw.log()
        assert r.stderr.strip() == f"port {up}: remote vx0 refused mtu 9000: Invalid argument; " \
                                   f"put back with its old settings", r.stderr
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"]]
    del cfg["ports"][1]["mtu"]
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_a_port_whose_new_ifname_is_taken_is_put_back_as_it_was(lab):
    """A reload renames a container's port to a name another device has there: the old port
    comes back, under its old name, with its address and its MAC, and its peer reaches it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.nsexec(ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
    mac = port_mac(sw, name)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    cfg["ports"][1]["ifname"] = "eth1"
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    result = json.loads(r.stdout)
    assert (r.returncode, result["failed"], result["remade"]) == (1, [name], []), r
    assert [(p["state"], p["error"]) for p in sw.cli_json("ports")] == [("up", None), ("up", None)], sw.log()
    assert helpers.link_mac(ns, "eth0") == mac == port_mac(sw, name)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2"), sw.log()
    assert result["errors"] == [f"port {name}: a device named eth1 already exists in namespace {ns}; "
                                f"put back with its old settings"], result
    helpers.nsexec(ns, "ip", "link", "del", "eth1")
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {name}"
    assert helpers.link_mac(ns, "eth1") == mac
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


def test_a_port_that_cannot_be_put_back_either_is_down_with_both_reasons(lab):
    """The same, and the reload gives a new port of that namespace the port's old name: that one
    is made, and the kernel refuses the old port's name to it too. Both reasons are said; it is
    down, as before, until a reload makes it."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    name, ns = cfg["ports"][1]["name"], cfg["ports"][1]["netns"]
    helpers.nsexec(ns, "ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth2")
    cfg["ports"][1]["ifname"] = "eth1"
    new = {"name": lab.name("p2"), "netns": f"/run/netns/{ns}", "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
    lab.links.append(new["name"])
    cfg["ports"].append(new)
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    result = json.loads(r.stdout)
    assert (r.returncode, result["added"], result["failed"]) == (1, [new["name"]], [name]), r
    error = (f"port {name}: a device named eth1 already exists in namespace {ns}; putting it back failed too: "
             f"a device named eth0 already exists in namespace {ns}")
    assert result["errors"] == [error], result
    assert [(p["name"], p["state"], p["error"]) for p in sw.cli_json("ports")] == [
        (cfg["ports"][0]["name"], "up", None), (new["name"], "up", None), (name, "down", error)]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.3")
    helpers.nsexec(ns, "ip", "link", "del", "eth1")
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {name}"
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")


HOLD_FAILS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "hold_fails.py"))


def test_out_of_descriptors_to_hold_a_namespace_it_made_the_reload_fails_that_port_and_leaves_nothing(lab):
    """A reload adds a port in a namespace the switch makes, and the switch cannot open it to
    hold it (EMFILE): the port is reported failed, the namespace made goes again and is not
    listed for a next start, nothing is left open, and the ports there are forward on."""
    cfg = base(lab, 2)
    for port in cfg["ports"]:        # the user's namespaces: the switch holds none of them
        port["netns"] = "/run/netns/" + lab.netns(port["netns"][-2:], create=True)
    sw = lab.switch(cfg, wrapper=HOLD_FAILS)
    fds = len(os.listdir(f"/proc/{sw.proc.pid}/fd"))
    new = lab.netns("c2")
    lab.links.append(lab.name("p2"))
    cfg["ports"].append({"name": lab.name("p2"), "netns": new, "ifname": "eth0", "addresses": ["198.18.4.3/24"]})
    rewrite(sw, cfg)
    for _ in range(2):
        r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                           capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout.strip()) == (1, f"reloaded: failed {lab.name('p2')}"), r
        assert r.stderr.strip() == (f"port {lab.name('p2')}: cannot open network namespace {new}: "
                                    f"Too many open files"), r.stderr
        assert new not in helpers.netns_list()
        assert not os.path.exists(sw.socket + ".state")
        assert len(os.listdir(f"/proc/{sw.proc.pid}/fd")) <= fds
    assert [(p["state"], p["error"]) for p in sw.cli_json("ports")] == [("up", None), ("up", None),
                                                                         ("down", r.stderr.strip())]
    assert helpers.ping(lab.name("c0"), "198.18.4.2")
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_a_reload_that_cannot_write_the_state_file_says_so_and_the_switch_runs_on(lab):
    """/run full: the state file beside the control socket (a small tmpfs here, filled)
    cannot be written. The reload that removed a port and its namespace raised ENOSPC out of
    the control loop, and the switch stopped. Now it is answered (exit 1): the port removed,
    the one whose namespace it could not write down first not made, the file not written; the
    others forward on, and once there is room the next reload writes what the switch has."""
    cfg = base(lab, 3)
    run = os.path.join(helpers.tmpdir(), "run")
    lab.dirs.append(os.path.dirname(run))
    os.mkdir(run)
    helpers.sh("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", run)
    try:
        cfg["switch"]["control"] = {"socket": os.path.join(run, "ctl.sock")}
        sw = lab.switch(cfg)
        state = sw.socket + ".state"
        # The file lists namespaces in the order they were made, and the ports of a start are
        # made several at once (ports.create_all): a loaded machine makes c2 before c1 at times.
        with open(state) as f:
            assert sorted(json.load(f)["created"]) == [p["netns"] for p in cfg["ports"]]
        filler = os.path.join(run, "filler")
        with open(filler, "wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * 4096)
        gone, new = cfg["ports"].pop(), {"name": lab.name("p3"), "netns": lab.name("c3"), "ifname": "eth0",
                                          "addresses": ["198.18.4.4/24"]}
        lab.namespaces.append(new["netns"])
        lab.links.append(new["name"])
        cfg["ports"].append(new)
        rewrite(sw, cfg)
        r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "--json", "-s", sw.socket],
                           capture_output=True, text=True, timeout=30)
        assert sw.proc.poll() is None, sw.log()
        assert r.returncode == 1, r
        reply = json.loads(r.stdout)
        why = f"cannot write the state file {state}: No space left on device"
        assert (reply["removed"], reply["added"], reply["failed"]) == ([gone["name"]], [], [new["name"]]), reply
        assert reply["errors"] == [f"port {new['name']}: {why}", why], reply
        assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
        assert gone["netns"] not in helpers.netns_list() and new["netns"] not in helpers.netns_list()
        with open(state) as f:
            assert sorted(json.load(f)["created"]) == [p["netns"] for p in cfg["ports"][:2]] + [gone["netns"]]  # behind
        assert sorted(os.listdir(run)) == ["ctl.sock", "ctl.sock.lock", "ctl.sock.state", "filler"]     # nothing half-written
        assert sw.events("runstate.save_failed")[0]["error"] == "No space left on device"

        os.unlink(filler)
        assert sw.cli("reload").stdout.strip() == f"reloaded: added {new['name']}"
        with open(state) as f:
            created = json.load(f)["created"]
        assert (sorted(created[:2]), created[2:]) == ([p["netns"] for p in cfg["ports"][:2]], [new["netns"]])
        assert helpers.ping(new["netns"], "198.18.4.1")
        assert sw.stop() == 0
        assert sorted(os.listdir(run)) == []
        assert "Traceback" not in sw.log()
    finally:
        for s in lab.switches:
            s.stop()
        helpers.sh("umount", run)


PIDFD_FAILS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "pidfd_fails.py"))


def test_out_of_descriptors_to_watch_a_reloads_new_worker_the_reload_says_so_and_the_worker_starts_again(
        lab, tmp_path, monkeypatch):
    """A reload adds a port, and the switch cannot open the pidfd of queue 0's new worker (EMFILE):
    the error went out of the control loop, and the switch stopped. Now the reload is answered
    (exit 1, the port added, the worker's failure in errors), the new process is killed and
    reaped, and the control loop starts the queue's worker again, as one that died."""
    trigger = tmp_path / "pidfd-fails"
    monkeypatch.setenv("TAPSWITCH_TEST_PIDFD_FAILS", str(trigger))
    cfg = base(lab, 2)
    sw = lab.switch(cfg, wrapper=PIDFD_FAILS)
    new = {"name": lab.name("p2"), "netns": lab.name("c2"), "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
    lab.namespaces.append(new["netns"])
    lab.links.append(new["name"])
    cfg["ports"].append(new)
    rewrite(sw, cfg)
    trigger.touch()
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert sw.proc.poll() is None, sw.log()
    assert (r.returncode, r.stdout.strip()) == (1, f"reloaded: added {new['name']}"), r
    assert r.stderr.strip() == "worker 0 could not be started: Too many open files", r
    assert not trigger.exists()
    [restarted] = helpers.wait_for("queue 0's worker started again", lambda: sw.events("worker.restarted"), within=10)
    assert restarted["queue"] == 0
    assert len(sw.worker_pids()) == 2
    children = helpers.sh("ps", "-o", "stat=", "--ppid", sw.proc.pid).stdout.split()
    assert len(children) == 2 and not [s for s in children if s.startswith("Z")], children    # none left, none unreaped
    assert helpers.ping(new["netns"], "198.18.4.1", count=3)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_a_port_that_changes_vlan_forgets_the_macs_it_had_in_the_old_one(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    name = cfg["ports"][1]["name"]
    assert [e["vlan"] for e in sw.cli_json("fdb") if e["port"] == name] == [1]
    cfg["ports"][1]["vlan"] = 20
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: updated {name}"
    assert not [e for e in sw.cli_json("fdb") if e["port"] == name and e["vlan"] == 1], sw.cli_json("fdb")
    event = sw.events("port.vlans_changed")[-1]
    assert (event["port"], event["fdb_flushed"]) == (name, 1), event


def test_a_port_whose_vlans_are_only_written_otherwise_keeps_its_macs(lab):
    """`vlan: 1` written out, a trunk's VLANs in another order: the port is in the same VLANs,
    and keeps what it learned (forgotten, frames for those MACs were flooded until each sent)."""
    cfg = base(lab, 3)
    cfg["ports"][2]["trunk"] = [10, 20]
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    a, b, t = (p["name"] for p in cfg["ports"])
    tagged = "ff" * 6 + "020000000a0a" + "8100" + "000a" + "88b5" + "00" * 46     # from the trunk, VLAN 10
    helpers.nsexec(cfg["ports"][2]["netns"], sys.executable, SENDER, "eth0", "--frame", tagged, 1)
    helpers.wait_for("the trunk's MAC learned", lambda: any(e["port"] == t for e in sw.cli_json("fdb")))
    learned = {(e["mac"], e["vlan"], e["port"]) for e in sw.cli_json("fdb")}
    assert {(port, vlan) for _, vlan, port in learned} == {(a, 1), (b, 1), (t, 10)}, learned
    cfg["ports"][1]["vlan"] = 1
    cfg["ports"][2]["trunk"] = [20, 10]
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: updated {b} {t}"
    assert {(e["mac"], e["vlan"], e["port"]) for e in sw.cli_json("fdb")} == learned
    assert not sw.events("port.vlans_changed")


def test_a_port_that_becomes_a_monitor_port_forgets_its_macs(lab):
    # It is in no VLAN: its entries sent frames for those MACs to a port that drops them.
    cfg = base(lab, 3)
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    name = cfg["ports"][1]["name"]
    assert [e["vlan"] for e in sw.cli_json("fdb") if e["port"] == name] == [1]
    cfg["mirrors"] = [{"name": "m", "from": [cfg["ports"][2]["name"]], "to": name}]
    rewrite(sw, cfg)
    sw.cli("reload")
    assert not [e for e in sw.cli_json("fdb") if e["port"] == name], sw.cli_json("fdb")
    event = sw.events("port.vlans_changed")[-1]
    assert (event["port"], event["fdb_flushed"]) == (name, 1), event


def test_a_reload_that_makes_a_port_with_an_acl_a_monitor_port_is_refused(lab):
    """Its ACL would hold no more (a monitor port's frames are dropped before it is read):
    the reload is refused where it says so, and the port goes on as the switch port it was."""
    cfg = base(lab, 3)
    cfg["ports"][1]["acl"] = [{"match": {"eth_type": "ipv4", "ip_proto": "udp"}, "action": "drop"}]
    sw = lab.switch(cfg)
    cfg["mirrors"] = [{"name": "m", "from": [cfg["ports"][2]["name"]], "to": cfg["ports"][1]["name"]}]
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    line = open(sw.config_path).read().splitlines().index("- acl:") + 1
    where = f"{sw.config_path}:{line}: ports[1].acl: acl has no effect on a monitor port "
    assert where in r.stderr, r.stderr
    assert sw.events("config.reload_failed")[-1]["errors"][0].startswith(where)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")       # not a monitor port: it answers
    assert [p["state"] for p in sw.cli_json("ports")] == ["up", "up", "up"]


def test_a_reload_applies_the_log_level(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)                                    # debug, JSON (the helper's default)
    sw.cli("fdb", "flush")
    assert sw.events("fdb.flushed")
    cfg["switch"]["log"] = {"level": "warning", "format": "json"}
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"
    before = len(sw.events())
    sw.cli("fdb", "flush")                                  # an info event: not logged now
    cfg["switch"]["queues"] = 1                             # a refused reload: an error, logged
    rewrite(sw, cfg)
    subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket], capture_output=True, timeout=30)
    after = [e["event"] for e in sw.events()[before:] if e["event"] != "notify.failed"]    # tests' NOTIFY_SOCKET is gone
    assert after == ["config.reload_failed"], after


def test_a_notify_socket_gone_is_logged_once_over_reloads_and_the_stop(lab):
    """The helper's $NOTIFY_SOCKET is gone once the switch is ready: each reload (RELOADING=1,
    READY=1) and the stop logged notify.failed again. Now once while it is the same failure."""
    sw = lab.switch(base(lab, 1))
    for _ in range(2):
        assert sw.cli("reload").stdout.strip() == "reloaded: no port changed"
    assert sw.stop() == 0
    assert [e["socket"] for e in sw.events("notify.failed")] == [os.path.join(sw.dir, "notify.sock")], sw.log()


def test_reload_applies_a_vlan_change_without_remaking_the_port(lab):
    cfg = base(lab, 2)
    cfg["ports"][0]["vlan"] = 10
    cfg["ports"][1]["vlan"] = 20
    sw = lab.switch(cfg)
    assert not helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", wait=1)   # different VLANs
    mac_before = helpers.link_mac(cfg["ports"][1]["netns"], "eth0")
    cfg["ports"][1]["vlan"] = 10
    rewrite(sw, cfg)
    assert sw.cli("reload").stdout.strip() == f"reloaded: updated {cfg['ports'][1]['name']}"
    # Several tries: the neighbour entry that failed while the VLANs differed must be resolved anew.
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=10)
    assert helpers.link_mac(cfg["ports"][1]["netns"], "eth0") == mac_before        # same device


def reloads(sw) -> list[dict]:
    """The outcome of each reload the switch has done: config.reloaded, or config.reload_failed."""
    return [e for e in sw.events() if e.get("event") in ("config.reloaded", "config.reload_failed")]


def test_workers_killed_during_reloads_do_not_stop_the_switch(lab):
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    for i in range(4):
        cfg["ports"][1]["addresses"] = [f"198.18.4.{30 + i}/24"]     # remade: the workers are replaced
        rewrite(sw, cfg)
        sw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.02 * i)
        for pid in sw.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        helpers.wait_for(f"reload {i + 1}'s outcome",
                         lambda: len(reloads(sw)) > i or sw.proc.poll() is not None, within=30)
    assert sw.proc.poll() is None, sw.log()
    assert [e["event"] for e in reloads(sw)] == ["config.reloaded"] * 4, sw.log()
    deadline = time.monotonic() + 5
    while len(sw.worker_pids()) < 2:
        assert time.monotonic() < deadline, sw.log()
        time.sleep(0.1)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.33", count=10)
    assert "Traceback" not in sw.log()


def test_a_worker_killed_while_a_reload_starts_the_new_ones_is_a_death_logged_and_counted(lab):
    """A worker that dies while a reload starts the new workers (its pidfd is not watched
    meanwhile) is a death like any: worker.exited with its signal, and its queue's new worker
    counts as its restart (it was worker.stopped, exit_code -9, a warning, and counted nowhere:
    tapswitch_worker_restarts_total and the crash-loop count missed it)."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    old = sw.worker_pids()
    assert len(old) == 2
    [queue] = [e["queue"] for e in sw.events("worker.started") if e["pid"] == old[0]]
    cfg["ports"][1]["addresses"] = ["198.18.4.41/24"]       # remade: every worker is replaced
    rewrite(sw, cfg)
    sw.proc.send_signal(signal.SIGHUP)
    helpers.wait_for("the reload's new workers", lambda: len(sw.worker_pids()) > 2, within=10, every=0.002)
    os.kill(old[0], signal.SIGKILL)
    helpers.wait_for("the reload", lambda: sw.events("config.reloaded"), within=10)
    assert [(e["pid"], e.get("signal")) for e in sw.events("worker.exited")] == [(old[0], "SIGKILL")], sw.log()
    assert [(e["queue"], e["restarts"]) for e in sw.events("worker.restarted")] == [(queue, 1)], sw.log()
    assert not sw.events("worker.stopped"), sw.log()
    assert len(sw.worker_pids()) == 2
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.41", count=3)


def test_a_worker_that_will_not_stop_is_killed_after_the_grace_and_the_reload_goes_on(lab):
    """A worker asked to stop that neither drains nor exits (stopped here by SIGSTOP, so SIGTERM
    stays pending) is SIGKILLed after the 1 s grace; its queue's new worker then takes over."""
    cfg = base(lab, 2)
    sw = lab.switch(cfg)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2")
    old = sw.worker_pids()
    assert len(old) == 2
    os.kill(old[0], signal.SIGSTOP)
    cfg["ports"][1]["addresses"] = ["198.18.4.40/24"]       # remade: every worker is replaced
    rewrite(sw, cfg)
    t0 = time.monotonic()
    assert sw.cli("reload").stdout.strip() == f"reloaded: remade {cfg['ports'][1]['name']}", sw.log()
    assert time.monotonic() - t0 >= 0.9                     # it waited out the grace
    timeouts = sw.events("worker.stop_timeout")
    assert [e["pid"] for e in timeouts] == [old[0]], sw.log()
    assert not os.path.exists(f"/proc/{old[0]}")            # killed and reaped
    drained = [e["pid"] for e in sw.events("worker.drained")]     # a remade port: two replacements
    assert drained[0] == old[1] and old[0] not in drained, sw.log()
    new = sw.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.40", count=10)
    assert not sw.events("worker.exited") and "Traceback" not in sw.log()


WORKER_START_HANGS = (sys.executable, os.path.join(os.path.dirname(__file__), "..", "worker_start_hangs.py"))


def test_a_reload_while_a_worker_restarts_gives_it_its_new_worker_and_leaves_no_process(lab, tmp_path, monkeypatch):
    """A reload that adds a port hands every queue a new worker. A queue whose worker is restarting
    (its new process hung in its start, here) gets one too, at once: the process starting, which
    has the old ports, is killed, and the reload's worker, with the new ones, counts as the
    restart. (The reload waited until the restart was given up: 5 s a try.)"""
    start = tmp_path / "worker-start"
    monkeypatch.setenv("TAPSWITCH_TEST_WORKER_START", str(start))
    cfg = base(lab, 2)
    sw = lab.switch(cfg, wrapper=WORKER_START_HANGS)
    stuck = []
    try:
        pid = sw.worker_pids()[0]
        [queue] = [e["queue"] for e in sw.events("worker.started") if e["pid"] == pid]
        start.write_text("hang")
        os.kill(pid, signal.SIGKILL)
        stuck = helpers.wait_for("the new worker's process", lambda: helpers.sh(
            "pgrep", "-P", sw.proc.pid, "-f", "worker_start_hangs.py --worker", check=False).stdout.split(),
            within=5, every=0.01)
        start.unlink()                  # the reload's workers start as any
        new_port = {"name": lab.name("p2"), "netns": lab.name("c2"), "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
        lab.namespaces.append(new_port["netns"])
        lab.links.append(new_port["name"])
        cfg["ports"].append(new_port)
        rewrite(sw, cfg)
        t0 = time.monotonic()
        out = sw.cli("reload").stdout.strip()
        took = time.monotonic() - t0
        print(f"reload answered in {took:.3f}s while a worker hung restarting")
        assert out == f"reloaded: added {new_port['name']}", sw.log()
        assert not os.path.exists(f"/proc/{stuck[0]}")        # killed and reaped
        assert len(sw.worker_pids()) == 2
        [restarted] = sw.events("worker.restarted")
        assert restarted["queue"] == queue and restarted["restarts"] == 1
        assert sw.events("worker.start_failed") == []       # at once: not after the start was given up
        assert helpers.ping(new_port["netns"], "198.18.4.1", count=3)
        assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    finally:
        for pid in stuck:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def upgraded_clone(tmp_path) -> tuple[str, str]:
    """A copy of the tapswitch package, for a switch to run from (PYTHONPATH), and the fast path
    an in-place upgrade to the next TS_VERSION would build for it: the same sources, TS_VERSION
    one more (a build of 2 s). Put in place with os.replace, as install.sh's build does: a new
    file under the old name, the switch's processes keeping the one they loaded."""
    src = str(tmp_path / "src")
    shutil.copytree(os.path.join(os.path.dirname(control.__file__)), os.path.join(src, "tapswitch"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    next_src = tmp_path / "next" / "tapswitch"
    shutil.copytree(os.path.join(src, "tapswitch", "fastpath"), next_src / "fastpath")
    shutil.copy(os.path.join(src, "tapswitch", "fastpath_build.py"), next_src)
    header = next_src / "fastpath" / "fastpath.h"
    text = header.read_text()
    version = int(re.search(r"^#define TS_VERSION (\d+)$", text, re.M).group(1))
    header.write_text(text.replace(f"#define TS_VERSION {version}\n", f"#define TS_VERSION {version + 1}\n"))
    build = str(tmp_path / "build")
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import fastpath_build; "
                    "fastpath_build.ffibuilder.compile(tmpdir=sys.argv[2], target='_fastpath.abi3.so')",
                    str(next_src), build], check=True, capture_output=True, timeout=300)
    return src, os.path.join(build, "tapswitch", "_fastpath.abi3.so")


def switch_to_upgrade(lab, tmp_path, monkeypatch):
    """A switch of two ports run from upgraded_clone's copy: (it, its config, the fast path file
    it loaded, the upgrade's), its own fast path kept as tmp_path/ours.so to go back to."""
    src, upgrade = upgraded_clone(tmp_path)
    so = os.path.join(src, "tapswitch", "_fastpath.abi3.so")
    shutil.copy(so, tmp_path / "ours.so")
    monkeypatch.setenv("PYTHONPATH", src)
    cfg = base(lab, 2)
    return lab.switch(cfg), cfg, so, upgrade


def test_after_an_upgrade_of_another_version_a_reload_that_needs_new_workers_is_refused_and_forwarding_goes_on(
        lab, tmp_path, monkeypatch):
    """`git pull && ./scripts/install.sh` under a running switch, to a fast path that lays the
    shared memory out otherwise (TS_VERSION). A reload that adds a port replaces every worker:
    each was stopped, its new one refused to run on the old memory, and the switch forwarded
    nothing until restarted (exit 1). Now the reload is refused before anything changes (exit
    2, saying to restart), and the old workers go on; once an install brings the switch's
    version back, the reload goes through."""
    from tapswitch._fastpath import lib
    sw, cfg, so, upgrade = switch_to_upgrade(lab, tmp_path, monkeypatch)
    pids = sorted(sw.worker_pids())
    assert len(pids) == 2
    os.replace(upgrade, so)                              # the upgrade's install
    new = {"name": lab.name("p2"), "netns": lab.name("c2"), "ifname": "eth0", "addresses": ["198.18.4.3/24"]}
    lab.namespaces.append(new["netns"])
    lab.links.append(new["name"])
    cfg["ports"].append(new)
    rewrite(sw, cfg)
    r = subprocess.run([sys.executable, "-m", "tapswitch", "reload", "-s", sw.socket],
                       capture_output=True, text=True, timeout=40)
    why = (f"the switch's shared memory is of version {lib.TS_VERSION}, the fast path installed now of "
           f"version {lib.TS_VERSION + 1}: the switch was upgraded while it ran; restart it")
    assert (r.returncode, r.stderr) == (2, "cannot add, remove or make again a port now: that starts new workers, which "
                                           f"would not run: {why}\nreload refused; the switch runs on as it was\n"), r
    assert sw.events("config.reload_failed")[-1]["errors"] == [r.stderr.splitlines()[0]]
    assert sorted(sw.worker_pids()) == pids and not sw.events("workers.replaced"), sw.log()
    assert [p["name"] for p in sw.cli_json("ports")] == [p["name"] for p in cfg["ports"][:2]]
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    shutil.copy(tmp_path / "ours.so", so + ".new")       # an install of the switch's version again
    os.replace(so + ".new", so)
    assert sw.cli("reload").stdout.strip() == f"reloaded: added {new['name']}", sw.log()
    assert helpers.ping(new["netns"], "198.18.4.1", count=3)
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()


def test_after_an_upgrade_of_another_version_a_dead_worker_is_held_back_and_said_once(lab, tmp_path, monkeypatch):
    """The same upgrade, and a worker dies: its restart started SPAWN_TRIES processes, each
    refusing to run on the old memory, and logged 4 errors every 30 s until the switch was
    restarted. Now none is started: one worker.start_failed, held; an install that brings the
    switch's version back lets it start again at the next look."""
    from tapswitch._fastpath import lib
    sw, cfg, so, upgrade = switch_to_upgrade(lab, tmp_path, monkeypatch)
    pids = sw.worker_pids()
    os.replace(upgrade, so)                              # the upgrade's install
    os.kill(pids[0], signal.SIGKILL)
    [held] = helpers.wait_for("the dead worker held back", lambda: sw.events("worker.start_failed"), within=10)
    assert held.get("held") is True and held["error"].endswith(
        f"cannot start: the switch's shared memory is of version {lib.TS_VERSION}, the fast path installed now "
        f"of version {lib.TS_VERSION + 1}: the switch was upgraded while it ran; restart it"), sw.log()
    assert sw.worker_pids() == pids[1:], sw.log()       # none started for it
    shutil.copy(tmp_path / "ours.so", so + ".new")       # an install of the switch's version again
    os.replace(so + ".new", so)
    helpers.wait_for("the held worker started again", lambda: sw.events("worker.restarted"), within=10)
    assert len(sw.events("worker.start_failed")) == 1, sw.log()      # said once, not at each look
    assert len(sw.worker_pids()) == 2
    assert helpers.ping(cfg["ports"][0]["netns"], "198.18.4.2", count=3)
    assert sw.stop() == 0
    assert "Traceback" not in sw.log()
