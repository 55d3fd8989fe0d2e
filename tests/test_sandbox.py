"""fst_env.sandbox: normal programs, limits, and a hostile suite that must end cleanly and leave the host alone."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fst_env.sandbox import STATUSES, SandboxLimits, SandboxPool, run_many, run_python, sandbox_isolation

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

REPO = Path(__file__).resolve().parents[1]


def _descendants(root: int) -> set[int]:
    """Pids of every live descendant of ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _processes_with(text: str) -> list[int]:
    hits = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                hits.append(int(entry))
    return hits


@pytest.fixture(scope="module")
def isolation() -> tuple[str, ...]:
    return sandbox_isolation()


# --------------------------------------------------------------------------------------------- normal programs
def test_prints_output_and_reads_stdin():
    result = run_python("name = input()\nprint('hello', name)\nprint(sum(range(10)))", stdin="world\n")
    assert result.status == "ok", result
    assert result.ok and result.returncode == 0
    assert result.stdout == "hello world\n45\n"
    assert result.stderr == "" and result.error == ""
    assert 0 <= result.wall_time < 5
    assert {"process-session", "rlimits", "scrubbed-env"} <= set(result.isolation)


def test_exception_status_names_the_error_and_line():
    result = run_python("x = 1\ny = 0\nprint(x / y)\n")
    assert result.status == "error" and result.returncode == 1
    assert result.error == "ZeroDivisionError: division by zero"
    assert 'solution.py", line 3' in result.stderr
    assert "fst_sandbox" not in result.stderr and "runpy" not in result.stderr  # only the program's frames


def test_exit_codes_and_syntax_errors():
    assert run_python("import sys; sys.exit(0)").status == "ok"
    three = run_python("import sys; sys.exit(3)")
    assert (three.status, three.returncode) == ("error", 3)
    syntax = run_python("def f(:\n    pass\n")
    assert syntax.status == "error" and syntax.error.startswith("SyntaxError")
    segv = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert (segv.status, segv.returncode) == ("killed", -11) and "SIGSEGV" in segv.error


@pytest.mark.parametrize("code", ["", "print('\ud800')", "print(1)\x00", "\x00\x01\xff garbage \u202e", "é" * 5000])
def test_odd_source_text_never_raises(code):
    result = run_python(code)
    assert result.status in ("ok", "error")
    if code == "":
        assert result.status == "ok"


def test_same_program_same_output_including_set_order():
    code = "print({'pear', 'apple', 'fig', 'kiwi', 'plum', 'lime'})\nimport random; print(type(random.random()))"
    first, second = run_python(code), run_python(code, use_zygote=False)
    assert first.status == second.status == "ok"
    assert first.stdout == second.stdout  # fixed hash seed: set order does not vary between runs


def test_limits_validation_and_argument_types():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0).validate()
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", memory_mb=1)
    with pytest.raises(TypeError, match="unknown limit"):
        run_python("pass", timeout=3)
    with pytest.raises(TypeError, match="str"):
        run_python(b"print(1)")  # type: ignore[arg-type]
    assert SandboxLimits(timeout_s=1.2).cpu_limit_s == 2
    assert set(STATUSES) >= {"ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_error"}


def test_isolate_false_still_limits_and_says_so():
    result = run_python("print('trusted')", isolate=False)
    assert result.status == "ok" and result.stdout == "trusted\n"
    assert "netns" not in result.isolation and any("isolate=False" in note for note in result.notes)


# ------------------------------------------------------------------------------------------------ hostile suite
def test_fork_bomb_is_contained():
    run_python("pass")  # start the zygote first: it is meant to stay
    before = _descendants(os.getpid())
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(code, timeout_s=2, max_procs=16)
    assert result.status in ("timeout", "error"), result
    assert subprocess.run(["true"]).returncode == 0  # the host can still start processes
    assert _descendants(os.getpid()) == before  # and no bomb process survived the run


def test_memory_bomb_ends_with_memory_status():
    big = run_python("x = bytearray(10 ** 10)", memory_mb=256)
    assert big.status == "memory" and "256 MB" in big.error
    growing = run_python("xs = []\nwhile True:\n    xs.append(' ' * 10 ** 6)", memory_mb=128, timeout_s=10)
    assert growing.status == "memory", growing


def test_infinite_loop_and_sleep_time_out():
    loop = run_python("while True:\n    pass", timeout_s=1)
    assert loop.status == "timeout" and 0.9 <= loop.wall_time < 3
    sleep = run_python("import time\ntime.sleep(60)", timeout_s=0.5)
    assert sleep.status == "timeout" and "wall-clock" in sleep.error


def test_cpu_limit_below_wall_limit_is_a_timeout():
    result = run_python("while True:\n    pass", timeout_s=10, cpu_s=1)
    assert result.status == "timeout" and "CPU" in result.error
    assert result.wall_time < 8


def test_deep_recursion():
    plain = run_python("def f(n):\n    return f(n + 1)\nf(0)")
    assert plain.status == "error" and "RecursionError" in plain.error
    unbounded = run_python("import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)",
                           memory_mb=128, timeout_s=3)
    assert unbounded.status in ("memory", "killed", "timeout", "error"), unbounded


def test_huge_output_is_capped_and_stopped():
    result = run_python("while True:\n    print('x' * 1000)", max_output_bytes=100_000, timeout_s=5)
    assert result.status == "output_limit" and result.stdout_truncated
    assert len(result.stdout.encode()) == 100_000
    assert result.wall_time < 4  # stopped at the cap, not at the time limit


def test_stderr_is_truncated_not_fatal():
    code = "import sys\nfor i in range(20000):\n    print('e' * 100, file=sys.stderr)\nprint('done')"
    result = run_python(code, max_stderr_bytes=10_000)
    assert result.status == "ok" and result.stdout == "done\n"
    assert result.stderr_truncated and "[stderr truncated" in result.stderr and len(result.stderr) < 10_200


def test_writes_outside_the_work_dir_do_not_reach_the_host():
    tag = f"fst_sandbox_probe_{uuid.uuid4().hex}"
    targets = [f"/tmp/{tag}", str(REPO / tag), f"/var/tmp/{tag}", f"/dev/shm/{tag}", f"{Path.home()}/{tag}"]
    code = ("import os\n"
            f"for path in {targets!r}:\n"
            "    try:\n"
            "        with open(path, 'w') as f:\n"
            "            f.write('escaped')\n"
            "        print('wrote', path)\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc.errno)\n"
            "open('inside.txt', 'w').write('fine')\n"
            "print('cwd', os.getcwd(), sorted(os.listdir('.')))\n")
    result = run_python(code)
    assert result.status == "ok", result
    assert "inside.txt" in result.stdout  # the private work dir is writable
    leaked = [t for t in targets if os.path.exists(t)]
    for path in leaked:
        os.remove(path)
    assert leaked == []
    assert f"refused {REPO / tag}" in result.stdout  # the repository itself refuses the write


def test_file_size_limit():
    result = run_python("open('big.bin', 'wb').write(b'x' * (40 << 20))", max_file_mb=4, memory_mb=256)
    assert result.status == "error" and "File too large" in result.error


def test_network_is_unreachable(isolation):
    if "netns" not in isolation:
        pytest.skip(f"no network namespace here ({sandbox_isolation()}): network isolation not in force")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    code = ("import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    print('CONNECTED')\n"
            "except OSError as exc:\n"
            "    print('failed', exc.errno)\n")
    try:
        result = run_python(code)
        assert result.status == "ok" and result.stdout.startswith("failed"), result
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_parent_environment_and_process_memory_stay_private(monkeypatch):
    monkeypatch.setenv("FST_FAKE_SECRET", "hunter2-do-not-leak")
    code = ("import os, glob\n"
            "print(sorted(os.environ))\n"
            "print(os.environ.get('FST_FAKE_SECRET'))\n"
            "for path in glob.glob('/proc/*/environ'):\n"
            "    try:\n"
            "        if b'hunter2' in open(path, 'rb').read():\n"
            "            print('LEAK', path)\n"
            "    except OSError:\n"
            "        pass\n")
    result = run_python(code)
    assert result.status == "ok", result
    assert "hunter2" not in result.stdout and "LEAK" not in result.stdout
    assert "FST_FAKE_SECRET" not in result.stdout


def test_killing_the_parent_does_not_reach_the_caller():
    me = os.getpid()
    result = run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('after', os.getppid())")
    assert os.getpid() == me and result.status in ("ok", "killed", "sandbox_error")
    assert run_python("print(7)").stdout == "7\n"  # and the sandbox still works afterwards


def test_daemonised_children_do_not_outlive_the_run():
    tag = f"{time.time_ns() % 10 ** 9}.5"
    # The fresh root has no /bin/sleep: exec the interpreter (bound there) with "sleep <tag>" in its argv.
    code = ("import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, ['python', '-S', '-c', 'import time; time.sleep({tag})',"
            f" 'sleep {tag}'])\n"
            "    os._exit(0)\n"
            "print('parent done')\n")
    result = run_python(code)
    assert result.status == "ok" and result.stdout == "parent done\n"
    deadline = time.monotonic() + 2
    while _processes_with(f"sleep {tag}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(f"sleep {tag}") == []


def test_claimed_isolation_is_real(isolation):
    code = ("import os\n"
            "print(os.getuid())\n"
            "print(sorted(p for p in os.listdir('/proc') if p.isdigit())[:5])\n")
    result = run_python(code)
    uid, pids = result.stdout.splitlines()
    if "uid-nobody" in result.isolation:
        assert uid == "65534"
    if "pidns" in result.isolation and "private-proc" in result.isolation:
        assert int(ast.literal_eval(pids)[0]) == 1  # only the sandbox's own processes are visible
    if os.geteuid() == 0 and shutil.which("unshare"):
        # This machine class (root, namespaces and cgroup v1 available) must get the full set.
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            assert {"netns", "pidns", "mountns", "readonly-fs", "uid-nobody", "private-tmp", "minimal-root",
                    "nodev-nosuid"} <= set(isolation)


# -------------------------------------------------------------------------------------------- pools and leaks
def test_run_many_keeps_order_and_leaves_no_processes():
    run_python("pass")  # start the zygote first: it is meant to stay
    before = _descendants(os.getpid())
    codes = [f"print({i} * {i})" for i in range(12)] + ["import time\ntime.sleep(30)"]
    results = run_many(codes, workers=4, timeout_s=1.5)
    assert [r.stdout for r in results[:12]] == [f"{i * i}\n" for i in range(12)]
    assert results[12].status == "timeout"
    time.sleep(0.2)
    assert _descendants(os.getpid()) == before


def test_pool_submit_map_and_stdin():
    with SandboxPool(workers=2) as pool:
        future = pool.submit("print(input()[::-1])", stdin="abc\n")
        mapped = pool.map(["print(int(input()) + 1)"] * 3, ["1\n", "2\n", "3\n"])
        assert future.result().stdout == "cba\n"
    assert [r.stdout for r in mapped] == ["2\n", "3\n", "4\n"]
    with pytest.raises(ValueError, match="workers"):
        SandboxPool(0)
    with pytest.raises(ValueError, match="stdins"):
        run_many(["pass", "pass"], stdins=["x"])


def test_cgroups_are_removed_after_runs():
    from fst_env.sandbox import _Cgroup

    base = _Cgroup.base()
    if base is None:
        pytest.skip("no writable pids cgroup here")
    run_many(["print(1)"] * 4, workers=2)
    assert [d for d in os.listdir(base) if d.startswith(f"fst-sbx-{os.getpid()}-")] == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_without_namespaces_root_still_runs_the_program_as_nobody():
    # Root without CAP_SYS_ADMIN (a default Docker container): no namespaces, but the uid change must hold,
    # even when nobody cannot read the interpreter's own directory.
    program = f"import os, json, decimal\nprint(os.getuid())\nopen({str(REPO / 'nocap_probe')!r}, 'w')\n"
    script = ("import json\n"
              "from fst_env.sandbox import run_python\n"
              f"r = run_python({program!r})\n"
              "print(json.dumps([r.status, r.stdout, r.error, list(r.isolation), list(r.notes)]))\n")
    proc = subprocess.run(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    import json

    status, stdout, error, isolation, notes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "mountns" not in isolation and any("namespaces unavailable" in n for n in notes)
    assert "uid-nobody" in isolation and stdout == "65534\n"
    assert status == "error" and "Permission denied" in error
    assert not (REPO / "nocap_probe").exists()


def test_stale_run_dirs_of_dead_parents_are_swept(monkeypatch):
    import tempfile

    from fst_env import sandbox

    stale = Path(tempfile.gettempdir()) / "fst-sbx-99999999-stale"  # above any pid_max: that parent is dead
    mine = Path(tempfile.mkdtemp(prefix=f"fst-sbx-{os.getpid()}-"))
    stale.mkdir(exist_ok=True)
    monkeypatch.setattr(sandbox, "_SWEPT", False)
    try:
        sandbox._sweep_host_dirs()
        assert not stale.exists() and mine.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root, setpriv and a system python3 to act as an unprivileged user")
def test_unprivileged_user_gets_user_namespace_isolation():
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="fst-unpriv-"))  # pytest's tmp_path is not readable by nobody
    script = folder / "unpriv.py"
    script.write_text(
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('sbx', {str(REPO / 'fst_env' / 'sandbox.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['sbx'] = m; spec.loader.exec_module(m)\n"
        f"r = m.run_python(\"open({str(REPO / 'unpriv_probe')!r}, 'w')\")\n"
        "f = m.run_python('import os\\nwhile True:\\n    os.fork()', timeout_s=3, max_procs=8)\n"
        "print(json.dumps([r.status, r.error, list(r.isolation), f.status]))\n")
    os.chmod(folder, 0o755)
    os.chmod(script, 0o644)
    try:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                               str(script)], capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot run as nobody here: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr
    import json

    status, error, isolation, fork_status = json.loads(proc.stdout.strip().splitlines()[-1])
    if "userns" not in isolation:
        pytest.skip(f"unprivileged user namespaces are disabled here: {isolation}")
    # Denied either way: read-only, not permitted, or (a checkout under /tmp) hidden behind the private /tmp.
    assert status == "error" and any(word in error for word in ("Read-only", "Permission", "No such file"))
    assert {"netns", "pidns", "readonly-fs"} <= set(isolation)
    assert fork_status in ("error", "timeout")
    assert not (REPO / "unpriv_probe").exists()


# ------------------------------------------------------------------------------------- filesystem allow-list
def _needs_minimal_root(isolation: tuple[str, ...]) -> None:
    if "minimal-root" not in isolation:
        pytest.skip(f"no fresh root here ({isolation}): the allow-list is not in force")


def test_host_unix_sockets_are_unreachable(isolation, tmp_path):
    if "netns" not in isolation:
        pytest.skip("no network namespace here: abstract sockets are shared")
    _needs_minimal_root(isolation)
    path = str(tmp_path / "host.sock")
    abstract = f"\0fst-sandbox-probe-{uuid.uuid4().hex}"
    servers = []
    for address in (path, abstract):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(4)
        server.settimeout(0.3)
        servers.append(server)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o777)  # so only the sandbox, not file permissions, stands between nobody and the socket
    try:
        for address, server in zip((path, abstract), servers, strict=True):  # the servers work from the host
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(address)
                server.accept()[0].close()
        code = ("import socket\n"
                f"for address in {[path, abstract]!r}:\n"
                "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "    try:\n"
                "        s.connect(address)\n"
                "        print('CONNECTED', repr(address))\n"
                "    except OSError as exc:\n"
                "        print('refused', exc.errno)\n")
        result = run_python(code)
        assert result.status == "ok", result
        assert "CONNECTED" not in result.stdout and result.stdout.count("refused") == 2, result.stdout
        for server in servers:
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        for server in servers:
            server.close()


def test_host_files_are_not_readable(isolation):
    _needs_minimal_root(isolation)
    targets = ["/etc/passwd", "/etc/hostname", "/srv", "/root", "/work", str(REPO), str(REPO / "README.md"),
               str(REPO / "fst_env" / "sandbox.py"), "/etc", sys.prefix]
    code = ("import os\n"
            f"for path in {targets!r}:\n"
            "    try:\n"
            "        if os.path.isdir(path):\n"
            "            print('listed', path, sorted(os.listdir(path)))\n"
            "        else:\n"
            "            print('read', path, open(path, 'rb').read()[:40])\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc.errno)\n")
    result = run_python(code)
    assert result.status == "ok", result
    lines = {line.split(" ", 2)[1]: line for line in result.stdout.splitlines()}
    for path in ["/etc/passwd", "/etc/hostname", "/srv", "/work", str(REPO), str(REPO / "README.md"),
                 str(REPO / "fst_env" / "sandbox.py")]:
        assert lines[path].startswith("refused"), lines[path]
    assert "ld.so.cache" in lines["/etc"] and "passwd" not in lines["/etc"] and "hostname" not in lines["/etc"]
    # /root holds only the path down to the interpreter (a bare directory chain), none of root's files.
    if lines["/root"].startswith("listed"):
        listed = ast.literal_eval(lines["/root"].split(" ", 2)[2])
        assert set(listed) <= {".pyenv", ".local", ".cache"} and ".bashrc" not in listed


def test_mounts_are_nodev_nosuid_and_mostly_noexec(isolation):
    _needs_minimal_root(isolation)
    result = run_python("print(open('/proc/self/mountinfo').read())\n"
                        "import subprocess, sys\n"
                        "print(subprocess.run([sys.executable, '-S', '-c', 'print(6 * 7)'], capture_output=True,"
                        " text=True).stdout)")
    assert result.status == "ok", result
    mounts = [line.split() for line in result.stdout.splitlines() if " - " in line]
    assert len(mounts) > 5
    executable = []
    for fields in mounts:
        point, options = fields[4], set(fields[5].split(","))
        assert "nosuid" in options, fields
        if point.startswith("/dev/") and point[5:] in ("null", "zero", "full", "random", "urandom"):
            assert {"ro", "noexec"} <= options, fields  # the harmless pseudo-devices: the only device files
        else:
            assert "nodev" in options, fields
        if point in ("/", "/tmp", "/dev/shm", "/proc", "/etc/ld.so.cache"):
            assert "noexec" in options, fields
        if "noexec" not in options:
            executable.append(point)
        if point not in ("/tmp", "/dev/shm", "/proc"):
            assert "ro" in options, fields
    # Execution is left only to the interpreter and the shared libraries it loads.
    assert executable and all("lib" in p or "python" in p for p in executable), executable
    assert result.stdout.rstrip().endswith("42")  # and the interpreter itself still starts inside


def test_gpu_and_block_devices_are_absent(isolation):
    _needs_minimal_root(isolation)
    result = run_python("import os\nprint(sorted(os.listdir('/dev')))")
    assert result.status == "ok", result
    listed = ast.literal_eval(result.stdout)
    assert not [d for d in listed if d.startswith(("nvidia", "dri", "vd", "sd", "nvme", "kvm", "mem", "kmsg"))]
    assert {"null", "urandom", "zero"} <= set(listed)
