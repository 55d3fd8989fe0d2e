"""A sandbox for model-written Python: a separate, resource-limited, isolated process per run.

``run_python(code, stdin=...)`` returns a :class:`SandboxResult` whose ``status`` is one of :data:`STATUSES`
and whose ``isolation`` lists the mechanisms that were actually in force for that run (Linux only).

How a run is built (each layer degrades on its own, and the result says which were in force):

- **Process tree.** A small trusted launcher ``L`` (forked from a pre-started *zygote* interpreter, or spawned
  directly) starts in its own session, joins a per-run **pids cgroup** (``pids.max``: the fork-bomb defence
  that still binds for root, where ``RLIMIT_NPROC`` does not), and enters new **mount, network, IPC, UTS and
  PID namespaces**. Its child ``P1`` is pid 1 of the new PID namespace: a reaper that starts the user process
  ``U`` and reports how it ended on a private status pipe. When ``P1`` exits the kernel kills everything left
  in the namespace, so daemonised grandchildren cannot outlive a run; the parent also kills the session and
  the cgroup, and ``L`` has its own wall-clock backstop in case the parent dies.
- **Filesystem.** In the new mount namespace the launcher builds a fresh tmpfs root holding only an allow-list
  (:func:`_allow_list`): the interpreter, its standard library (its site-packages covered by an empty mount),
  the directories of the shared libraries it loads, ``/etc/ld.so.cache``, and the pseudo-devices ``/dev/null``,
  ``zero``, ``full``, ``random``, ``urandom``; everything bound read-only, ``nosuid`` and ``nodev`` (the
  pseudo-devices excepted from ``nodev`` only), and ``noexec`` except the interpreter and its libraries. It
  then calls ``pivot_root`` into it and detaches the old root, so the checkout, ``/etc``, ``/srv``, ``/root``,
  GPU and block devices, and every host unix socket path are absent, not merely read-only (abstract unix
  sockets belong to the network namespace: none of the host's is reachable). Empty size-limited tmpfs mounts
  give ``/tmp`` (the run's working directory) and ``/dev/shm``; a fresh ``/proc`` shows only the sandbox's own
  processes. Where no fresh root can be made, the fallback makes the host's whole tree read-only, ``nosuid``
  and ``nodev`` instead (``isolation`` then lacks ``minimal-root``, and ``notes`` says why).
- **Identity.** As root, ``U`` runs as ``nobody`` (65534) inside a user namespace of its own (where
  ``RLIMIT_NPROC`` counts only the run's processes), with no capabilities and ``no_new_privs``. In the fresh
  root the directories down to the interpreter are made traversable; in the fallback, a directory nobody
  cannot enter (e.g. a Python under ``/root``) is covered by a tmpfs in which only the interpreter's prefix
  is bound back. As an ordinary user the namespaces are made inside a user namespace,
  and a nested user namespace locks the read-only mounts.
- **Limits.** ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_NPROC``, ``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``,
  ``RLIMIT_CORE=0``; a wall-clock limit enforced by the parent; stdout capped (overflow kills the run),
  stderr truncated; the environment is replaced by a minimal one (``PATH``, ``LANG``, ``HOME``, ``TMPDIR``),
  so no secret in the parent's environment reaches the program; the interpreter runs with ``-S -s`` (standard
  library only, no site-packages) and a fixed hash seed, so the same program prints the same output.

Where a layer is unavailable (no namespaces in a container, no cgroups for a non-root user, ...) the run goes
on with what remains and ``result.isolation`` / ``result.notes`` say so; the fallback still has the session
kill, rlimits, a private temporary working directory and the scrubbed environment, and as root still the
uid change (the standard library is then reached through directory handles opened before it, if nobody
cannot read the interpreter's directory). Not used: seccomp filters, so the kernel's whole system-call
surface (including unprivileged user namespaces) stays reachable from the program.

The zygote is one interpreter per parent process, started on first use; it forks a launcher per run, which
saves the ~10-30 ms an interpreter start costs (``benchmarks/sandbox_throughput.py`` measures both).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

#: Every status a run can end with.
STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "memory", "output_limit", "killed", "sandbox_error")

NOBODY = 65534
_SETUP_GRACE_S = 5.0  # time allowed for namespace set-up before the user code starts (not counted as run time)
_LINGER_S = 0.3  # after the reaper reports, how long stray pipe holders (fallback mode only) may keep pipes open
_SCRIPT_NAME = "solution.py"
_SANDBOX_HOME = "/tmp/sandbox"  # the run's working directory inside the private /tmp

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
_SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64 (syscalls added after 5.1 share numbers)
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine) if hasattr(os, "uname") else None
#: The pseudo-devices bound into the fresh root (the only device files a program can open: harmless ones).
_DEVICES = ("null", "zero", "full", "random", "urandom")
_PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 4, 38

_SIGNAL_NOTES = {
    signal.SIGSEGV: "segmentation fault (usually the C stack overflowing from very deep recursion)",
    signal.SIGKILL: "killed (SIGKILL)",
    signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGXFSZ: "file size limit exceeded (SIGXFSZ)",
}


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one sandboxed run.

    ``status``: ``ok`` (exit code 0), ``error`` (non-zero exit, e.g. an uncaught exception), ``timeout``
    (wall-clock or CPU limit), ``memory`` (memory limit: ``MemoryError`` or an out-of-memory kill),
    ``output_limit`` (stdout over its cap: the run was killed), ``killed`` (ended by a signal, e.g. a
    segfault) or ``sandbox_error`` (the sandbox itself could not run the code). ``error`` is a one-line,
    human-readable account of anything but ``ok``. ``returncode`` follows :mod:`subprocess` (negative:
    killed by that signal; ``None``: no exit status, e.g. a timeout kill). ``wall_time`` and ``cpu_time``
    cover the user program only, not sandbox set-up.
    """

    status: str
    stdout: str
    stderr: str
    returncode: int | None
    wall_time: float
    error: str = ""
    isolation: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    cpu_time: float | None = None
    max_rss_mb: float | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the program ran to completion with exit code 0."""
        return self.status == "ok"


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run; every limit applies to the user program (and each of its processes).

    ``timeout_s`` is wall-clock time; ``cpu_s`` defaults to ``timeout_s`` rounded up. ``memory_mb`` is the
    address-space limit per process; ``max_procs`` bounds the run's processes and threads (pids cgroup and,
    where it binds, ``RLIMIT_NPROC``); ``max_file_mb`` bounds any one file written, ``tmp_mb`` the private
    ``/tmp``; ``max_output_bytes`` caps stdout (overflow kills the run), ``max_stderr_bytes`` truncates stderr.
    """

    timeout_s: float = 5.0
    cpu_s: float | None = None
    memory_mb: int = 512
    max_procs: int = 32
    max_open_files: int = 64
    max_file_mb: int = 16
    tmp_mb: int = 32
    max_output_bytes: int = 1 << 20
    max_stderr_bytes: int = 64 << 10

    def validate(self) -> None:
        """Raise ValueError naming the first limit that is out of range."""
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= 3600):
            raise ValueError(f"SandboxLimits.timeout_s must be in (0, 3600] seconds, got {self.timeout_s!r}")
        if self.cpu_s is not None and not (isinstance(self.cpu_s, (int, float)) and 0 < self.cpu_s <= 3600):
            raise ValueError(f"SandboxLimits.cpu_s must be None or in (0, 3600] seconds, got {self.cpu_s!r}")
        bounds = {"memory_mb": (64, 1 << 20), "max_procs": (1, 4096), "max_open_files": (16, 1 << 16),
                  "max_file_mb": (1, 1 << 20), "tmp_mb": (1, 1 << 20), "max_output_bytes": (1, 1 << 30),
                  "max_stderr_bytes": (1, 1 << 30)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"SandboxLimits.{name} must be an int in [{low}, {high}], got {value!r}")

    @property
    def cpu_limit_s(self) -> int:
        """The CPU-seconds limit actually set (RLIMIT_CPU takes whole seconds)."""
        return max(1, int(-(-(self.cpu_s if self.cpu_s is not None else self.timeout_s) // 1)))


# ===================================================================================================== parent side
def run_python(code: str, *, stdin: str | bytes = "", limits: SandboxLimits | None = None, isolate: bool = True,
               use_zygote: bool = True, **limit_overrides: Any) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox and return how it ended (never raises for bad code).

    Limits come from ``limits`` (a :class:`SandboxLimits`) updated by keyword overrides such as
    ``timeout_s=2, memory_mb=256``. ``isolate=False`` skips namespaces and the uid change (rlimits, session
    kill, cgroup and scrubbed environment stay): for trusted code only. ``use_zygote=False`` starts a fresh
    interpreter for the run instead of forking the zygote (slower; same isolation).
    """
    if not isinstance(code, str):
        raise TypeError(f"run_python expects the program as a str, got {type(code).__name__}")
    if not isinstance(stdin, (str, bytes)):
        raise TypeError(f"run_python expects stdin as str or bytes, got {type(stdin).__name__}")
    limits = limits or SandboxLimits()
    if limit_overrides:
        unknown = set(limit_overrides) - set(SandboxLimits.__dataclass_fields__)
        if unknown:
            raise TypeError(f"run_python got unknown limit(s) {sorted(unknown)}; known: "
                            f"{sorted(SandboxLimits.__dataclass_fields__)}")
        limits = SandboxLimits(**{**limits.__dict__, **limit_overrides})
    limits.validate()
    data = stdin if isinstance(stdin, bytes) else stdin.encode("utf-8", "surrogatepass")
    return _Run(code.encode("utf-8", "surrogatepass"), data, limits, isolate, use_zygote).execute()


def run_many(codes: Iterable[str], *, stdins: Iterable[str | bytes] | None = None, workers: int | None = None,
             **kwargs: Any) -> list[SandboxResult]:
    """Run several programs in parallel (``workers`` at a time) and return their results in order."""
    codes = list(codes)
    inputs = [""] * len(codes) if stdins is None else list(stdins)
    if len(inputs) != len(codes):
        raise ValueError(f"run_many got {len(codes)} programs but {len(inputs)} stdins")
    with SandboxPool(workers) as pool:
        return pool.map(codes, inputs, **kwargs)


class SandboxPool:
    """A bounded set of worker threads that grade programs in parallel through :func:`run_python`.

    Each run owns its processes and kills them before its future completes, so nothing outlives a run;
    :meth:`close` (or leaving the ``with`` block) cancels queued runs and waits for running ones to finish
    (each bounded by its own time limit). Workers default to twice the CPUs this process may use: a run spends
    much of its latency waiting on the kernel (cgroup migration, namespace set-up and teardown), not computing.
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = 2 * cpus
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"SandboxPool workers must be an int >= 1, got {workers!r}")
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fst-sandbox")

    def submit(self, code: str, **kwargs: Any) -> Future[SandboxResult]:
        """Queue one run; the future's result is its :class:`SandboxResult`."""
        return self._executor.submit(run_python, code, **kwargs)

    def map(self, codes: Sequence[str], stdins: Sequence[str | bytes] | None = None,
            **kwargs: Any) -> list[SandboxResult]:
        """Run every program (with the matching stdin) and return the results in order."""
        stdins = [""] * len(codes) if stdins is None else stdins
        futures = [self.submit(code, stdin=data, **kwargs) for code, data in zip(codes, stdins, strict=True)]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Cancel queued runs and wait for the running ones (each ends within its limits)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sandbox_isolation() -> tuple[str, ...]:
    """The isolation mechanisms a run gets on this machine (probed once with a trivial program, then cached)."""
    global _PROBED
    if _PROBED is None:
        _PROBED = run_python("pass", timeout_s=10).isolation
    return _PROBED


_PROBED: tuple[str, ...] | None = None


def _child_env() -> dict[str, str]:
    # Nothing of the parent's environment is passed on: secrets live in env vars more often than anywhere else.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0",
            "HOME": _SANDBOX_HOME, "TMPDIR": "/tmp"}


def _interpreter_argv() -> list[str]:
    # -S: no site-packages (standard library only; faster start, less to attack); -s: no user site; -B: never
    # write .pyc. Not -I/-E: they would drop PYTHONHASHSEED=0, which makes set/dict order (and so output)
    # reproducible; the environment is scrubbed instead, so no other PYTHON* variable reaches the child.
    boot = ("import importlib.util as u, sys\n"
            f"s = u.spec_from_file_location('_fst_sandbox_child', {os.path.abspath(__file__)!r})\n"
            "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m)\n"
            "m._child_main(sys.argv[1:])\n")
    return [sys.executable, "-S", "-s", "-B", "-c", boot]


class _Zygote:
    """A pre-started interpreter (one per parent process) that forks a launcher for each run."""

    _lock = threading.Lock()
    _instance: _Zygote | None = None

    def __init__(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [*_interpreter_argv(), "zygote", str(child_end.fileno())], pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_child_env(),
                cwd="/", start_new_session=True)
        finally:
            child_end.close()
        self.sock = parent_end
        self.owner = os.getpid()
        self.send_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Zygote:
        with cls._lock:
            z = cls._instance
            if z is None or z.owner != os.getpid() or z.proc.poll() is not None:
                if z is not None and z.owner == os.getpid():
                    z.close()
                z = cls._instance = _Zygote()
            return z

    def spawn(self, config: dict[str, Any], fds: Sequence[int]) -> None:
        with self.send_lock:
            socket.send_fds(self.sock, [json.dumps(config).encode()], list(fds))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()  # the zygote exits on end-of-file
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            if cls._instance is not None and cls._instance.owner == os.getpid():
                cls._instance.close()
            cls._instance = None


class _Cgroup:
    """A per-run pids cgroup (v1 or v2) under this process's own cgroup; ``None`` where none can be made."""

    _counter = 0
    _counter_lock = threading.Lock()
    _base: str | bool | None = False  # False: not probed yet; None: unavailable

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def base(cls) -> str | None:
        if cls._base is False:
            cls._base = cls._find_base()
            if cls._base is not None:
                cls._sweep(cls._base)
        return cls._base  # type: ignore[return-value]

    @staticmethod
    def _find_base() -> str | None:
        try:
            with open("/proc/self/cgroup") as f:
                lines = f.read().splitlines()
            with open("/proc/self/mountinfo") as f:
                mounts = [line.split() for line in f]
        except OSError:
            return None
        for line in lines:  # cgroup v1: a hierarchy with the pids controller
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(","):
                for m in mounts:
                    sep = m.index("-")
                    if m[sep + 1] == "cgroup" and "pids" in m[sep + 3].split(","):
                        return _usable_cgroup(m[4] + path)
        for line in lines:  # cgroup v2: the pids controller must already be enabled for our children
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                for m in mounts:
                    sep = m.index("-")
                    if m[sep + 1] == "cgroup2":
                        base = m[4] + path
                        try:
                            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                                if "pids" in f.read().split():
                                    return _usable_cgroup(base)
                        except OSError:
                            pass
        return None

    @staticmethod
    def _sweep(base: str) -> None:
        # Remove empty per-run cgroups left by a parent that was killed mid-run.
        with contextlib.suppress(OSError):
            for name in os.listdir(base):
                parts = name.split("-")
                stale = (name.startswith("fst-sbx-") and len(parts) >= 4 and parts[2].isdigit()
                         and not os.path.exists(f"/proc/{parts[2]}"))
                if stale:
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(base, name))

    @classmethod
    def create(cls, max_procs: int) -> _Cgroup | None:
        base = cls.base()
        if base is None:
            return None
        with cls._counter_lock:
            cls._counter += 1
            n = cls._counter
        path = os.path.join(base, f"fst-sbx-{os.getpid()}-{n}-{os.urandom(3).hex()}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        group = cls(path)
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(max_procs + 2))  # + the launcher and the reaper
        except OSError:
            group.remove()
            return None
        return group

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            with open(self.procs_file) as f:
                return [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self) -> None:
        kill_file = os.path.join(self.path, "cgroup.kill")  # v2 (5.14+): kills the whole group atomically
        if os.path.exists(kill_file):
            with contextlib.suppress(OSError), open(kill_file, "w") as f:
                f.write("1")
        for _ in range(50):  # v1: kill what is listed until nothing is left (forks may race the first pass)
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def remove(self) -> None:
        for _ in range(250):  # up to ~0.5 s: killed tasks leave the group as the kernel tears them down
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return
                self.kill_all()
                time.sleep(0.002)


_SWEPT = False


def _sweep_host_dirs() -> None:
    """Once per process: remove run directories left in the temp dir by a parent that was killed mid-run."""
    global _SWEPT
    if _SWEPT:
        return
    _SWEPT = True
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            parts = name.split("-")
            if name.startswith("fst-sbx-") and len(parts) >= 4 and parts[2].isdigit() \
                    and not os.path.exists(f"/proc/{parts[2]}"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _usable_cgroup(base: str) -> str | None:
    probe = os.path.join(base, f"fst-sbx-{os.getpid()}-0-probe")
    try:
        os.mkdir(probe)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        return base if os.path.exists(os.path.join(probe, "pids.max")) else None
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(probe)


class _Run:
    """One execution: set-up, the I/O pump with its limits, and clean-up (always, whatever happened)."""

    def __init__(self, code: bytes, stdin: bytes, limits: SandboxLimits, isolate: bool, use_zygote: bool) -> None:
        self.code, self.stdin, self.limits = code, stdin, limits
        self.isolate, self.use_zygote = isolate, use_zygote
        self.launcher_pid: int | None = None
        self.direct: subprocess.Popen | None = None

    def execute(self) -> SandboxResult:
        _sweep_host_dirs()
        host_dir = tempfile.mkdtemp(prefix=f"fst-sbx-{os.getpid()}-")
        group: _Cgroup | None = None
        fds: list[int] = []
        try:
            with open(os.path.join(host_dir, _SCRIPT_NAME), "wb") as f:
                f.write(self.code)
            group = _Cgroup.create(self.limits.max_procs)
            stdin_r, stdin_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            st_r, st_w = os.pipe()
            fds = [stdin_r, stdin_w, out_r, out_w, err_r, err_w, st_r, st_w]
            config = {"host_dir": host_dir, "limits": self.limits.__dict__, "isolate": self.isolate,
                      "cgroup_procs": group.procs_file if group else None,
                      "backstop_s": self.limits.timeout_s + _SETUP_GRACE_S + 5.0}
            child_fds = [stdin_r, out_w, err_w, st_w]
            try:
                self._spawn(config, child_fds)
            except OSError as exc:
                return self._failure(f"could not start the sandbox: {type(exc).__name__}: {exc}")
            for fd in child_fds:
                os.close(fd)
                fds.remove(fd)
            return self._pump(stdin_w, out_r, err_r, st_r, group, fds)
        finally:
            self._kill()
            if group is not None:
                group.kill_all()
                group.remove()
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.direct is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.direct.wait(timeout=5)
            shutil.rmtree(host_dir, ignore_errors=True)

    def _spawn(self, config: dict[str, Any], child_fds: list[int]) -> None:
        if self.use_zygote:
            for attempt in range(2):
                try:
                    _Zygote.get().spawn(config, child_fds)
                    return
                except OSError:
                    if attempt:
                        break
            # The zygote is gone and would not restart: fall back to a fresh interpreter for this run.
        stdin_r, out_w, err_w, st_w = child_fds
        config = {**config, "status_fd": st_w}
        self.direct = subprocess.Popen([*_interpreter_argv(), "launch", json.dumps(config)], stdin=stdin_r,
                                       stdout=out_w, stderr=err_w, pass_fds=(st_w,), env=_child_env(), cwd="/",
                                       start_new_session=True)
        self.launcher_pid = self.direct.pid

    def _kill(self) -> None:
        if self.launcher_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.launcher_pid, signal.SIGKILL)

    def _failure(self, message: str) -> SandboxResult:
        return SandboxResult("sandbox_error", "", "", None, 0.0, error=message)

    def _pump(self, stdin_w: int, out_r: int, err_r: int, st_r: int, group: _Cgroup | None,
              fds: list[int]) -> SandboxResult:
        limits = self.limits
        sel = selectors.DefaultSelector()
        out, err, status_buf = bytearray(), bytearray(), bytearray()
        out_over = err_over = False
        pending = memoryview(self.stdin)
        for fd in (out_r, err_r, st_r):
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if pending:
            os.set_blocking(stdin_w, False)
            sel.register(stdin_w, selectors.EVENT_WRITE)
        else:
            os.close(stdin_w)
            fds.remove(stdin_w)
        open_reads = {out_r, err_r, st_r}
        t0 = time.monotonic()
        started_at: float | None = None
        status_closed_at: float | None = None
        records: dict[str, Any] = {}
        timed_out = False
        try:
            while open_reads:
                now = time.monotonic()
                deadline = started_at + limits.timeout_s if started_at else t0 + _SETUP_GRACE_S + limits.timeout_s
                if status_closed_at is not None:
                    deadline = min(deadline, status_closed_at + _LINGER_S)
                if now >= deadline:
                    timed_out = status_closed_at is None
                    break
                for key, _ in sel.select(deadline - now):
                    fd = key.fd
                    if fd == stdin_w:
                        try:
                            written = os.write(stdin_w, pending[:65536])
                            pending = pending[written:]
                        except (BrokenPipeError, OSError):
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(stdin_w)
                            os.close(stdin_w)
                            fds.remove(stdin_w)
                        continue
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                        open_reads.discard(fd)
                        if fd == st_r:
                            status_closed_at = time.monotonic()
                        continue
                    if fd == out_r:
                        room = limits.max_output_bytes - len(out)
                        out += chunk[:room]
                        if len(chunk) > room:
                            out_over = True
                    elif fd == err_r:
                        room = limits.max_stderr_bytes - len(err)
                        err += chunk[:max(room, 0)]
                        err_over = err_over or len(chunk) > room
                    else:
                        status_buf += chunk
                        started_at = self._parse_status(status_buf, records, started_at)
                if out_over:
                    break
        finally:
            sel.close()
        ended_at = time.monotonic()
        self._kill()
        if group is not None:
            group.kill_all()
        return self._result(records, bytes(out), bytes(err), out_over, err_over, timed_out,
                            ended_at - (started_at or ended_at))

    def _parse_status(self, buf: bytearray, records: dict[str, Any], started_at: float | None) -> float | None:
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if "pid" in record and self.launcher_pid is None:
                self.launcher_pid = int(record["pid"])
            if "started" in record and started_at is None:
                started_at = time.monotonic()
            records.update(record)
        return started_at

    def _result(self, records: dict[str, Any], out: bytes, err: bytes, out_over: bool, err_over: bool,
                timed_out: bool, wall: float) -> SandboxResult:
        limits = self.limits
        stdout = out.decode("utf-8", "replace")
        stderr = err.decode("utf-8", "replace")
        if err_over:
            stderr += f"\n[stderr truncated at {limits.max_stderr_bytes:,} bytes]"
        exit_info = records.get("exit") or {}
        code = exit_info.get("code")
        sig = exit_info.get("signal")
        returncode = code if code is not None else (-sig if sig is not None else None)
        common = {"isolation": tuple(records.get("isolation", ())), "notes": tuple(records.get("notes", ())),
                  "cpu_time": records.get("cpu"), "max_rss_mb": records.get("max_rss_mb"),
                  "stdout_truncated": out_over, "stderr_truncated": err_over}

        def result(status: str, message: str = "") -> SandboxResult:
            return SandboxResult(status, stdout, stderr, returncode, round(wall, 6), message, **common)

        cpu = records.get("cpu") or 0.0
        last_line = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
        if out_over:
            return result("output_limit", f"stdout exceeded the output limit of {limits.max_output_bytes:,} bytes; "
                                          "the program was stopped")
        if timed_out:
            if "started" not in records:
                setup = records.get("setup_error", "the launcher did not report in time")
                return result("sandbox_error", f"sandbox set-up failed: {setup}")
            return result("timeout", f"wall-clock time limit of {limits.timeout_s:g} s exceeded")
        if "setup_error" in records and "exit" not in records:
            return result("sandbox_error", f"sandbox set-up failed: {records['setup_error']}")
        if not exit_info:
            return result("sandbox_error", "the sandbox ended without reporting the program's exit status")
        memory_words = ("MemoryError", "Cannot allocate memory", "out of memory")
        if sig is not None:
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_limit_s - 0.05):
                return result("timeout", f"CPU time limit of {limits.cpu_limit_s} s exceeded")
            if any(w in stderr for w in memory_words):
                return result("memory", f"memory limit of {limits.memory_mb} MB exceeded ({last_line[:200]})")
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return result("killed", f"the program was killed by {name}: {_SIGNAL_NOTES.get(sig, 'signal')}")
        if code == 0:
            return result("ok")
        if last_line.startswith("MemoryError") or (last_line and any(w in last_line for w in memory_words)):
            return result("memory", f"memory limit of {limits.memory_mb} MB exceeded ({last_line[:200]})")
        return result("error", last_line[:300] or f"the program exited with code {code}")


atexit.register(_Zygote.shutdown)


# ====================================================================================================== child side
# Everything below runs in the zygote / launcher interpreter (standard library only), never in the parent.
class _Libc:
    """The few system calls Python's ``os`` lacks before 3.12 (unshare, mount, mount_setattr, prctl, capset)."""

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    def _check(self, ret: int, what: str) -> None:
        if ret != 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        self._check(self.libc.unshare(flags), "unshare")

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        def enc(text: str | None) -> bytes | None:
            return text.encode() if text is not None else None

        ret = self.libc.mount(enc(source), enc(target), enc(fstype), self.ctypes.c_ulong(flags), enc(data))
        self._check(ret, f"mount {target}")

    def readonly_tree(self, path: str,
                      attrs: int = _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, clear: int = 0) -> None:
        """Set ``attrs`` (read-only, nosuid, nodev by default), clear ``clear``, on every mount at/below ``path``."""
        c = self.ctypes

        class MountAttr(c.Structure):
            _fields_: ClassVar = [("attr_set", c.c_uint64), ("attr_clr", c.c_uint64), ("propagation", c.c_uint64),
                                  ("userns_fd", c.c_uint64)]

        attr = MountAttr(attrs, clear, 0, 0)
        ret = self.libc.syscall(c.c_long(_SYS_MOUNT_SETATTR), c.c_int(_AT_FDCWD), c.c_char_p(path.encode()),
                                c.c_uint(_AT_RECURSIVE), c.byref(attr), c.c_size_t(c.sizeof(attr)))
        self._check(ret, "mount_setattr")

    def lock_mount(self, path: str, *, exec_ok: bool = False, dev_ok: bool = False) -> None:
        """Make the mounts at ``path`` read-only and nosuid, nodev unless ``dev_ok``, noexec unless ``exec_ok``."""
        attrs = (_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | (0 if dev_ok else _MOUNT_ATTR_NODEV)
                 | (0 if exec_ok else _MOUNT_ATTR_NOEXEC))
        try:
            self.readonly_tree(path, attrs)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
            # Before 5.12 (no mount_setattr): remount the top mount only (bind sources here carry no submounts).
            flags = (_MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | (0 if dev_ok else _MS_NODEV)
                     | (0 if exec_ok else _MS_NOEXEC))
            self.mount(None, path, None, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        if _SYS_PIVOT_ROOT is None:
            raise OSError(errno.ENOSYS, "pivot_root: unknown system-call number on this machine")
        c = self.ctypes
        ret = self.libc.syscall(c.c_long(_SYS_PIVOT_ROOT), c.c_char_p(new_root.encode()),
                                c.c_char_p(put_old.encode()))
        self._check(ret, "pivot_root")

    def umount2(self, target: str, flags: int) -> None:
        self._check(self.libc.umount2(target.encode(), self.ctypes.c_int(flags)), f"umount {target}")

    def prctl(self, option: int, value: int) -> None:
        c = self.ctypes
        self._check(self.libc.prctl(c.c_int(option), c.c_ulong(value), c.c_ulong(0), c.c_ulong(0), c.c_ulong(0)),
                    f"prctl({option})")

    def drop_capabilities(self) -> None:
        c = self.ctypes

        class Header(c.Structure):
            _fields_: ClassVar = [("version", c.c_uint32), ("pid", c.c_int)]

        class Data(c.Structure):
            _fields_: ClassVar = [("effective", c.c_uint32), ("permitted", c.c_uint32), ("inheritable", c.c_uint32)]

        data = (Data * 2)()
        self._check(self.libc.capset(c.byref(Header(0x20080522, 0)), data), "capset")


class _Status:
    """The private status pipe from launcher and reaper to the parent: one JSON object per line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **record: Any) -> None:
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]


def _child_main(argv: list[str]) -> None:
    """Entry point of the sandbox interpreter: ``zygote <fd>`` or ``launch <config-json>``."""
    sys.path[:] = [p for p in sys.path if p]  # drop the '' that -c puts first (the cwd is not ours to import)
    if argv[:1] == ["zygote"]:
        _zygote_loop(int(argv[1]))
    elif argv[:1] == ["launch"]:
        config = json.loads(argv[1])
        _launch(config, int(config["status_fd"]))
    else:
        raise SystemExit(f"fst_env.sandbox child: unknown mode {argv[:1]}")


def _zygote_loop(fd: int) -> None:
    # Pre-import what the launcher needs so each forked run starts warm.
    import ctypes  # noqa: F401
    import runpy  # noqa: F401
    import traceback  # noqa: F401

    libc = _Libc()
    _allow_list()  # once, here: every launcher forked below inherits it
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel; nothing waits for them
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except InterruptedError:
            continue
        except OSError:
            return
        if not message:
            return  # the parent closed its end (or exited): so do we
        try:
            config = json.loads(message)
        except ValueError:
            for received in fds:
                os.close(received)
            continue
        try:
            pid = os.fork()
        except OSError:
            pid = -1  # out of processes: the parent sees the status pipe close and reports a sandbox error
        if pid == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                stdin_fd, out_fd, err_fd, status_fd = fds
                os.dup2(stdin_fd, 0)
                os.dup2(out_fd, 1)
                os.dup2(err_fd, 2)
                status = os.dup(status_fd)
                for received in fds:
                    os.close(received)
                _launch(config, status, libc)
            finally:
                os._exit(70)
        for received in fds:
            os.close(received)


@dataclass
class _Plan:
    """What the launcher managed to set up, carried into the reaper and the user process."""

    isolation: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    root: bool = False
    pidns: bool = False
    mountns: bool = False
    userns_mode: bool = False
    reach_hidden: bool = False
    workdir: str = ""


def _launch(config: dict[str, Any], status_fd: int, libc: _Libc | None = None) -> NoReturn:
    """The launcher ``L``: cgroup, namespaces and mounts, then the reaper; exits when the reaper does."""
    status = _Status(status_fd)
    exit_code = 70
    try:
        os.closerange(3, status_fd)
        os.closerange(status_fd + 1, 1 << 16)
        status.send(pid=os.getpid())
        with open(os.path.join(config["host_dir"], _SCRIPT_NAME), "rb") as f:
            code = f.read()
        plan = _Plan(isolation=["process-session", "scrubbed-env", "rlimits"], root=os.geteuid() == 0)
        if config.get("cgroup_procs"):
            try:
                with open(config["cgroup_procs"], "w") as f:
                    f.write(str(os.getpid()))
                plan.isolation.append("cgroup-pids")
            except OSError as exc:
                plan.notes.append(f"pids cgroup not joined ({exc.strerror})")
        else:
            plan.notes.append("no pids cgroup (none writable here): RLIMIT_NPROC is the fork limit where it binds "
                              "(not for root)")
        if config["isolate"]:
            _enter_namespaces(libc or _Libc(), config, plan)
        else:
            plan.notes.append("isolate=False: no namespaces and no uid change (trusted code only)")
        if not plan.workdir:
            plan.workdir = config["host_dir"]
        reaper = os.fork()
        if reaper == 0:
            _reaper(config, plan, code, status, libc)
        _wait_with_backstop(reaper, float(config["backstop_s"]))
        exit_code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            status.send(setup_error=f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(exit_code)


def _enter_namespaces(libc: _Libc, config: dict[str, Any], plan: _Plan) -> None:
    base_flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS | _CLONE_NEWPID
    uid, gid = os.getuid(), os.getgid()
    try:
        if plan.root:
            libc.unshare(base_flags)
        else:
            libc.unshare(base_flags | _CLONE_NEWUSER)
            _write_id_maps(0, uid, 0, gid)
            plan.userns_mode = True
            plan.isolation.append("userns")
    except (OSError, AttributeError) as exc:  # AttributeError: a libc without unshare (not Linux)
        reason = exc.strerror if isinstance(exc, OSError) else "no unshare() here"
        plan.notes.append(f"namespaces unavailable ({reason}): no network/mount/pid isolation")
        if plan.root:
            # Still run as nobody. If nobody cannot reach the interpreter's directories (e.g. under /root), the
            # program imports through directory handles opened while still root (see _reach_hidden_paths).
            plan.isolation.append("uid-nobody")
            plan.reach_hidden = bool(_hidden_prefixes())
        return
    plan.mountns = plan.pidns = True
    plan.isolation += ["netns", "pidns", "ipcns", "utsns", "mountns"]
    libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    try:
        _build_root(libc, config, plan)
    except OSError as exc:
        os.chdir("/")
        plan.notes.append(f"no fresh root ({exc.strerror or exc}): the host's files stay visible, read-only")
        _lock_host_tree(libc, config, plan)
    os.mkdir(_SANDBOX_HOME, 0o700)
    if plan.root:
        os.chown(_SANDBOX_HOME, NOBODY, NOBODY)
    plan.workdir = _SANDBOX_HOME


def _build_root(libc: _Libc, config: dict[str, Any], plan: _Plan) -> None:
    """Pivot into a fresh tmpfs root holding only the allow-list; the host's tree is detached, not just hidden.

    The allow-list (:func:`_allow_list`, plus ``config["readonly_paths"]`` for callers that need more, such as
    a scoring worker's site-packages) is bound read-only, nosuid and nodev; only the interpreter, its extension
    modules and shared libraries may be executed. Pseudo-devices (:data:`_DEVICES`) are the only device files.
    Raises OSError before the pivot (nothing changed that the fallback cannot cover); after it, errors are fatal.
    """
    old_umask = os.umask(0o022)  # the directories made here must be traversable by nobody
    try:
        root = os.path.join(config["host_dir"], ".root")
        os.mkdir(root, 0o755)
        libc.mount("fst-sandbox", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        bound: dict[str, bool] = {}
        extra = [(p, True) for p in config.get("readonly_paths") or ()]
        for name, exec_ok in [*_allow_list(), *extra]:
            real = _graft_symlinks(root, name)
            covered = any((real == b or real.startswith(b.rstrip("/") + "/")) and (ok or not exec_ok)
                          for b, ok in bound.items())
            if covered or not os.path.exists(real):
                continue
            bound[real] = exec_ok
            target = root + real
            if os.path.isdir(real):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.exists(target):
                    open(target, "wb").close()
            libc.mount(real, target, None, _MS_BIND | _MS_REC)
            libc.lock_mount(target, exec_ok=exec_ok)
            for cover in ("site-packages", "dist-packages"):  # an allowed stdlib dir: third-party code stays out
                inner = os.path.join(real, cover)
                if os.path.isdir(inner) and inner not in bound and not any(inner == p for p, _ in extra):
                    libc.mount("fst-sandbox", root + inner, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY,
                               "size=4k,mode=0755")
        dev = root + "/dev"
        os.makedirs(dev, exist_ok=True)
        for device in _DEVICES:
            host = "/dev/" + device
            if os.path.exists(host) and stat.S_ISCHR(os.stat(host).st_mode):
                open(os.path.join(dev, device), "wb").close()
                libc.mount(host, os.path.join(dev, device), None, _MS_BIND)
                libc.lock_mount(os.path.join(dev, device), dev_ok=True)  # read-only still lets it be written
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, os.path.join(dev, name))
        os.makedirs(dev + "/shm")
        libc.mount("fst-sandbox", dev + "/shm", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=1m,mode=1777")
        os.makedirs(root + "/tmp")
        libc.mount("fst-sandbox", root + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                   f"size={int(config['limits']['tmp_mb'])}m,mode=1777")
        os.makedirs(root + "/proc")
        if plan.userns_mode:
            # A user namespace may mount a fresh proc only where a fully visible one already is: keep the host's
            # underneath (the reaper's mount covers it, and the program's nested namespace cannot unmount that).
            libc.mount("/proc", root + "/proc", None, _MS_BIND | _MS_REC)
        libc.mount(None, root, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        os.chdir(root)
        libc.pivot_root(".", ".")  # the old root ends up stacked on "/": detach it, with every host mount below
    finally:
        os.umask(old_umask)
    libc.umount2(".", _MNT_DETACH)
    os.chdir("/")
    plan.isolation += ["minimal-root", "readonly-fs", "nodev-nosuid", "private-tmp"]


def _graft_symlinks(root: str, path: str) -> str:
    """Recreate under ``root`` the symlinks met along host ``path`` (e.g. /lib -> usr/lib); return its real path."""
    parts = [p for p in path.split("/") if p]
    current, hops = "/", 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        host = os.path.join(current, part)
        if not os.path.islink(host):
            current = host
            continue
        hops += 1
        if hops > 40:
            raise OSError(errno.ELOOP, f"too many symlinks in {path}")
        link = os.readlink(host)
        inside = root + host
        if not os.path.lexists(inside):
            os.makedirs(root + current, exist_ok=True)
            os.symlink(link, inside)
        if link.startswith("/"):
            current = "/"
        parts = [p for p in link.split("/") if p] + parts
    return current


_ALLOW: list[tuple[str, bool]] | None = None
_REAL_EXECUTABLE = os.path.realpath(sys.executable)  # resolved on the host: inside the fresh root a venv is not there


def _allow_list() -> list[tuple[str, bool]]:
    """``(host path, may execute)`` for what a program needs: interpreter, stdlib, shared libraries, ld.so.cache.

    Computed once per interpreter (the zygote computes it before forking, so launchers inherit it). Library
    directories are those of every shared object this interpreter has mapped, plus the multiarch ones the
    dynamic loader searches for extension modules' dependencies; libraries inside the Python prefix are bound
    one file at a time, so the prefix's other contents (site-packages, scripts) stay out.
    """
    global _ALLOW
    if _ALLOW is not None:
        return _ALLOW
    prefixes = tuple(os.path.realpath(p) + "/" for p in {sys.base_prefix, sys.prefix})
    wanted: dict[str, bool] = {os.path.realpath(sys.executable): True}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            real = os.path.realpath(entry)
            wanted[real] = wanted.get(real, False) or os.path.basename(real) == "lib-dynload"
    libraries: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            if len(fields) == 6 and fields[5].startswith("/") and ".so" in os.path.basename(fields[5]):
                libraries.add(os.path.realpath(fields[5].strip()))
    for lib in libraries:
        wanted[lib if lib.startswith(prefixes) else os.path.dirname(lib)] = True
    import glob
    import sysconfig

    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    names = [f"/lib/{multiarch}", f"/usr/lib/{multiarch}"] if multiarch else []
    names += [*glob.glob("/lib64/ld-linux*.so*"), *glob.glob("/lib/ld-linux*.so*")]
    allowed = [(name, True) for name in names if os.path.exists(name)]
    if os.path.isfile("/etc/ld.so.cache"):
        allowed.append(("/etc/ld.so.cache", False))
    reals = sorted(wanted.items())
    for path, exec_ok in reals:
        # A path inside an allowed directory with at least its rights needs no mount of its own.
        covered = any(path.startswith(other.rstrip("/") + "/") and (ok or not exec_ok) for other, ok in reals)
        if not covered:
            allowed.append((path, exec_ok))
    _ALLOW = allowed
    return _ALLOW


def _lock_host_tree(libc: _Libc, config: dict[str, Any], plan: _Plan) -> None:
    """The fallback when no fresh root can be made: the host's whole tree, read-only, nosuid and nodev."""
    hidden = _hidden_prefixes() if plan.root else {}
    staged: list[tuple[str, str]] = []
    for i, prefix in enumerate(sorted({p for ps in hidden.values() for p in ps})):
        stage = os.path.join(config["host_dir"], f".stage{i}")
        os.mkdir(stage)
        libc.mount(prefix, stage, None, _MS_BIND | _MS_REC)
        staged.append((stage, prefix))
    try:
        libc.readonly_tree("/")
        plan.isolation += ["readonly-fs", "nodev-nosuid"]
        for device in _DEVICES:  # nodev above also stopped these; bind them back, read-only (still writable)
            with contextlib.suppress(OSError):
                libc.mount("/dev/" + device, "/dev/" + device, None, _MS_BIND)
                libc.readonly_tree("/dev/" + device, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NOEXEC,
                                   clear=_MOUNT_ATTR_NODEV)
    except OSError as exc:
        plan.notes.append(f"could not make the filesystem read-only ({exc.strerror})")
    for ancestor in sorted(hidden):
        libc.mount("fst-sandbox", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    for stage, prefix in staged:
        os.makedirs(prefix, exist_ok=True)
        libc.mount(stage, prefix, None, _MS_MOVE)
    for ancestor in sorted(hidden):
        libc.mount(None, ancestor, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    limits = config["limits"]
    libc.mount("fst-sandbox", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={int(limits['tmp_mb'])}m,mode=1777")
    for extra, mode in (("/var/tmp", "1777"), ("/dev/shm", "1777"), ("/run", "0755")):
        if os.path.isdir(extra) and not os.path.islink(extra):
            with contextlib.suppress(OSError):
                libc.mount("fst-sandbox", extra, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size=1m,mode={mode}")
    plan.isolation.append("private-tmp")


def _write_id_maps(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{inside_uid} {outside_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{inside_gid} {outside_gid} 1")


def _hidden_prefixes() -> dict[str, list[str]]:
    """Interpreter directories that ``nobody`` cannot reach, keyed by the first ancestor that blocks it."""
    hidden: dict[str, list[str]] = {}
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}:
        current = "/"
        for part in prefix.strip("/").split("/"):
            current = os.path.join(current, part)
            try:
                mode = os.stat(current).st_mode
            except OSError:
                break
            if not mode & 0o001:
                hidden.setdefault(current, []).append(prefix)
                break
    return hidden


def _wait_with_backstop(pid: int, backstop_s: float) -> None:
    # The parent enforces the real limits; this only guarantees the run ends if the parent died meanwhile.
    def expire(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the reaper is pid 1 of the run's namespace: all of it goes

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, backstop_s)
    os.waitpid(pid, 0)  # retried by Python after the handler runs (PEP 475)
    signal.setitimer(signal.ITIMER_REAL, 0)


def _reaper(config: dict[str, Any], plan: _Plan, code: bytes, status: _Status, libc: _Libc | None) -> NoReturn:
    """``P1``: pid 1 of the run's PID namespace; starts the user process and reports how it ended."""
    try:
        libc = libc or _Libc()
        if plan.pidns:
            try:
                # Not read-only: the reaper writes its user-namespace id maps through it.
                libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                plan.isolation.append("private-proc")
            except OSError:
                # Hide the host's processes (and their environments) if a fresh /proc is refused.
                libc.mount("fst-sandbox", "/proc", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_RDONLY, "size=4k")
                plan.notes.append("/proc hidden (a fresh proc mount was refused)")
        if not plan.mountns and plan.root and "uid-nobody" in plan.isolation:
            os.chown(plan.workdir, NOBODY, NOBODY)  # the host temp dir is root's; the program (nobody) works in it
            if plan.reach_hidden:
                _reach_hidden_paths(plan)
        _drop_privileges(libc, plan)
        script = os.path.join(plan.workdir, _SCRIPT_NAME)
        if plan.mountns:
            with open(script, "wb") as f:
                f.write(code)
        os.chdir(plan.workdir)
        with contextlib.suppress(OSError):
            libc.prctl(_PR_SET_DUMPABLE, 0)  # the program must not ptrace its reaper to forge the status
        status.send(isolation=plan.isolation, notes=plan.notes, started=True)
        user = os.fork()
        if user == 0:
            _run_user_program(config, script, status.fd, libc)
        while True:
            pid, wait_status, usage = os.wait4(-1, 0)
            if pid == user:
                break
        record: dict[str, Any] = {"cpu": round(usage.ru_utime + usage.ru_stime, 4),
                                  "max_rss_mb": round(usage.ru_maxrss / 1024, 2)}
        if os.WIFSIGNALED(wait_status):
            record["exit"] = {"signal": os.WTERMSIG(wait_status)}
        else:
            record["exit"] = {"code": os.WEXITSTATUS(wait_status)}
        status.send(**record)
        os._exit(0)
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            status.send(setup_error=f"{type(exc).__name__}: {exc}")
        os._exit(70)


def _reach_hidden_paths(plan: _Plan) -> None:
    """Point ``sys.path`` entries that nobody cannot reach at directory handles opened now, while still root.

    ``/proc/self/fd/N`` is a magic link: following it does not re-check the (unreadable) directories above
    the target, so imports keep working after the switch to nobody. Only the standard library is reached
    this way; everything else above it stays unreadable.
    """
    hidden = tuple(a.rstrip("/") + "/" for a in _hidden_prefixes())
    reached = []
    for entry in sys.path:
        if entry.startswith(hidden) and os.path.isdir(entry):
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY)  # inherited by the program; counts toward NOFILE
            reached.append(f"/proc/self/fd/{fd}")
        elif not entry.startswith(hidden):
            reached.append(entry)
    sys.path[:] = reached
    sys.path_importer_cache.clear()
    plan.notes.append("the interpreter's directories are not readable by nobody and there is no mount namespace: "
                      "the standard library is reached through directory handles opened before the uid change")


def _drop_privileges(libc: _Libc, plan: _Plan) -> None:
    if plan.root and ("uid-nobody" in plan.isolation or plan.mountns):
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        # Changing uid made us non-dumpable, which puts /proc/self (and its id maps) out of our own reach.
        libc.prctl(_PR_SET_DUMPABLE, 1)
        if "uid-nobody" not in plan.isolation:
            plan.isolation.append("uid-nobody")
        # A user namespace of the run's own makes RLIMIT_NPROC count only this run's processes.
        try:
            libc.unshare(_CLONE_NEWUSER)
            _write_id_maps(NOBODY, NOBODY, NOBODY, NOBODY)
            libc.drop_capabilities()
            plan.isolation.append("userns")
        except OSError as exc:
            plan.notes.append(f"no user namespace for the program ({exc.strerror}): RLIMIT_NPROC is per-uid")
    elif plan.userns_mode:
        # Nested user + mount namespace: the read-only mounts become locked, and the program has no privilege.
        uid, gid = os.getuid(), os.getgid()  # 0 inside the first namespace
        outer_uid = _outer_id("/proc/self/uid_map")
        outer_gid = _outer_id("/proc/self/gid_map")
        libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS)
        _write_id_maps(outer_uid, uid, outer_gid, gid)
        libc.drop_capabilities()
    with contextlib.suppress(OSError):
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1)
        plan.isolation.append("no-new-privs")


def _outer_id(map_file: str) -> int:
    with open(map_file) as f:
        return int(f.read().split()[1])


def _run_user_program(config: dict[str, Any], script: str, status_fd: int, libc: _Libc) -> NoReturn:
    """``U``: limits, then the program itself, run in this (forked, already warm) interpreter."""
    code = 1
    try:
        os.close(status_fd)
        with contextlib.suppress(OSError):
            libc.prctl(_PR_SET_DUMPABLE, 1)  # its own /proc/self stays readable
        limits = config["limits"]
        cpu = max(1, int(-(-(limits["cpu_s"] if limits["cpu_s"] is not None else limits["timeout_s"]) // 1)))
        memory = int(limits["memory_mb"]) << 20
        file_size = int(limits["max_file_mb"]) << 20
        for which, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                             (resource.RLIMIT_FSIZE, file_size), (resource.RLIMIT_NOFILE, limits["max_open_files"]),
                             (resource.RLIMIT_NPROC, limits["max_procs"]), (resource.RLIMIT_AS, memory)):
            soft, hard = value if isinstance(value, tuple) else (value, value)
            resource.setrlimit(which, (soft, hard))
        sys.argv = [script]
        if os.path.exists(_REAL_EXECUTABLE):
            sys.executable = _REAL_EXECUTABLE  # so a program can start the interpreter (a venv's link is not there)
        sys.path[:] = [os.path.dirname(script), *[p for p in sys.path if p]]
        if "random" in sys.modules:
            sys.modules["random"].seed()
        sys.stdout.flush()
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"fst sandbox: could not start the program: {type(exc).__name__}: {exc}\n".encode())
        os._exit(70)
    try:
        code = _exec_script(script)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _exec_script(script: str) -> int:
    import runpy
    import traceback

    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        with contextlib.suppress(BaseException):
            print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next  # show the program's frames, not the sandbox's (none for a SyntaxError)
        try:
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        except BaseException:  # e.g. MemoryError while formatting
            with contextlib.suppress(BaseException):
                os.write(2, f"{type(exc).__name__}\n".encode())
        return 1

