"""The isolated judging worker: deadlines, fork-per-call, reply validation, recovery, threads, no leaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from fst_env import judging

HERE = __name__


# ------------------------------------------------------------------ targets run inside the worker's children
def add(a: int, b: int) -> int:
    return a + b


def spin() -> None:
    while True:
        pass


def touch(path: str) -> str:
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError as exc:
        return f"denied: {exc.strerror}"
    return "written"


def patch_countdown() -> str:
    from reasoning_gym.games.countdown import CountdownDataset

    CountdownDataset.score_answer = lambda self, answer, entry: 1.0
    return "patched"


def countdown_score(answer: str) -> float:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset("countdown", seed=0, size=1)
    return float(dataset.score_answer(answer, dataset[0]))


def _result_fd() -> int:
    return max(int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2)


def write_raw(data: str, repeat: int) -> None:
    fd = _result_fd()
    payload = data.encode() * repeat
    while payload:
        payload = payload[os.write(fd, payload):]
    os._exit(0)


def not_a_number() -> float:
    return float("nan")


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def spawn_sleeper(tag: str) -> str:
    subprocess.Popen(["sleep", "300", tag], start_new_session=True)
    return "spawned"


# ------------------------------------------------------------------ tests
@pytest.fixture(autouse=True, scope="module")
def _worker():
    judging.warm()
    yield
    judging.shutdown()


def test_a_call_returns_the_json_result():
    assert judging.isolated_call(f"{HERE}:add", 2, 3) == 5


def test_deadline_kills_the_child_and_the_next_call_works():
    server = judging.worker_pid()
    start = time.monotonic()
    with pytest.raises(judging.JudgeTimeout):
        judging.isolated_call(f"{HERE}:spin", deadline_s=1.0)
    assert time.monotonic() - start < 1.0 + judging.MARGIN_S
    assert judging.isolated_call(f"{HERE}:add", 1, 1) == 2
    assert judging.worker_pid() == server  # the child was replaced, the warm server kept


def test_a_patched_scorer_dies_with_its_child():
    wrong = "1 + 1"
    before = judging.isolated_call(f"{HERE}:countdown_score", wrong)
    assert before < 1.0
    assert judging.isolated_call(f"{HERE}:patch_countdown") == "patched"
    assert judging.isolated_call(f"{HERE}:countdown_score", wrong) == before


@pytest.mark.parametrize(("data", "repeat"), [("not json", 1), ("[1, 2", 1), ('"x"', 1), ("{}", 1),
                                              ('{"status": "ok", "value": "' + "a" * 1000, 2000)])
def test_malformed_or_huge_child_output_is_rejected(data, repeat):
    with pytest.raises(judging.JudgeError) as caught:
        judging.isolated_call(f"{HERE}:write_raw", data, repeat)
    assert not isinstance(caught.value, judging.JudgeTimeout)
    assert judging.isolated_call(f"{HERE}:add", 1, 2) == 3


def test_non_finite_results_and_crashes_are_errors():
    with pytest.raises(judging.JudgeError):
        judging.isolated_call(f"{HERE}:not_a_number")
    with pytest.raises(judging.JudgeError):
        judging.isolated_call(f"{HERE}:crash")
    with pytest.raises(judging.JudgeError):
        judging.isolated_call("no_such_module_xyz:f")


def test_a_garbage_speaking_server_is_rejected_and_replaced(monkeypatch):
    class Liar(judging._Server):
        def __init__(self) -> None:
            script = "import sys\nprint('{\"ready\": true}', flush=True)\nsys.stdin.readline()\nprint('garbage')\n"
            self.proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, start_new_session=True, bufsize=0)
            self.owner, self.buffer, self.ready, self.next_id = os.getpid(), b"", None, 0

    judging.shutdown()
    monkeypatch.setattr(judging, "_Server", Liar)
    with pytest.raises(judging.JudgeError):
        judging.isolated_call(f"{HERE}:add", 1, 2)
    monkeypatch.undo()
    judging.shutdown()
    assert judging.isolated_call(f"{HERE}:add", 1, 2) == 3


def test_worker_death_mid_call_is_survived():
    judging.warm()
    pid = judging.worker_pid()
    killer = threading.Timer(0.3, lambda: os.killpg(pid, signal.SIGKILL))
    killer.start()
    start = time.monotonic()
    with pytest.raises(judging.JudgeError):
        judging.isolated_call(f"{HERE}:spin", deadline_s=5.0)
    assert time.monotonic() - start < 3.0
    killer.join()
    assert judging.isolated_call(f"{HERE}:add", 4, 4) == 8
    assert judging.worker_pid() != pid


def test_concurrent_calls_from_threads():
    results: dict[int, int] = {}

    def work(k: int) -> None:
        for j in range(4):
            results[k * 10 + j] = judging.isolated_call(f"{HERE}:add", k, j)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {k * 10 + j: k + j for k in range(6) for j in range(4)}


def _host_processes_with(tag: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if tag.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_no_process_outlives_a_call_or_the_worker():
    tag = f"fst-judge-{uuid.uuid4().hex}"
    result = judging.isolated_call(f"{HERE}:spawn_sleeper", tag)
    assert result == "spawned" or "fork-per-call" in judging.isolation()
    time.sleep(0.2)
    assert _host_processes_with(tag) == []
    pid = judging.worker_pid()
    judging.shutdown()
    time.sleep(0.2)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_files_written_by_a_call_do_not_reach_the_host(tmp_path):
    layers = judging.isolation()
    if "readonly-fs" not in layers:
        pytest.skip(f"no filesystem isolation here: {judging.isolation_notes()}")
    for base in ("/tmp", os.getcwd(), str(tmp_path)):
        marker = os.path.join(base, f"fst-judge-marker-{uuid.uuid4().hex}")
        judging.isolated_call(f"{HERE}:touch", marker)
        assert not os.path.exists(marker)


def test_deadline_is_validated():
    for bad in (0, -1, float("nan"), float("inf"), 601, True, "5"):
        with pytest.raises(ValueError):
            judging.isolated_call(f"{HERE}:add", 1, 2, deadline_s=bad)
    with pytest.raises(ValueError):
        judging.isolated_call("no-colon", 1)


def test_the_server_outlives_the_thread_that_started_it():
    judging.shutdown()
    starter = threading.Thread(target=judging.warm)
    starter.start()
    starter.join(timeout=120)
    pid = judging.worker_pid()
    time.sleep(0.3)
    assert judging.isolated_call(f"{HERE}:add", 2, 2) == 4
    assert judging.worker_pid() == pid


def test_the_server_exits_when_the_trainer_dies():
    script = ("import sys, time; from fst_env import judging; judging.warm(); "
              "print(judging.worker_pid(), flush=True); time.sleep(60)")
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(trainer.stdout.readline())
        trainer.kill()
        trainer.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        trainer.kill()


def test_code_under_tmp_stays_importable_and_read_only(monkeypatch):
    # CI's venv (and often a checkout) lives under /tmp, which the worker covers with a private tmpfs.
    import tempfile

    folder = tempfile.mkdtemp(prefix="fst-judge-import-", dir="/tmp")
    module = os.path.basename(folder).replace("-", "_")
    with open(os.path.join(folder, f"{module}.py"), "w") as f:
        f.write("import os\n\ndef where():\n    return __file__\n\n"
                "def write(path):\n    try:\n        open(path, 'w').write('x')\n        return 'wrote'\n"
                "    except OSError as exc:\n        return type(exc).__name__\n")
    monkeypatch.syspath_prepend(folder)
    judging.shutdown()  # the next call starts a server that sees the new sys.path
    try:
        assert judging.isolated_call(f"{module}:where").startswith(folder)
        target = os.path.join(folder, "written-by-the-worker")
        assert judging.isolated_call(f"{module}:write", target) != "wrote"
        assert not os.path.exists(target)
    finally:
        judging.shutdown()
