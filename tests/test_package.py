"""The exported package installs from a built wheel into a fresh virtual environment and imports without nbdev or Jupyter."""
import subprocess, sys, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd[:3]} exited {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def test_wheel_installs_and_imports_without_nbdev_or_jupyter(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("codecomplete-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    modules = sorted(n[:-3].replace("/", ".") for n in names if n.startswith("codecomplete/") and n.endswith(".py")
                     and "job_notebooks" not in n and not n.endswith("__init__.py"))
    assert "codecomplete.config" in modules and "codecomplete.jobs" in modules
    notebooks = [n for n in names if n.startswith("codecomplete/job_notebooks/") and n.endswith(".ipynb")]
    assert notebooks, "job notebooks must ship in the wheel"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    run(pip + ["torch==2.13.0"])
    run(pip + [str(wheel)])
    check = f"""
import importlib, importlib.util
for m in {modules!r}: importlib.import_module(m)
for absent in ("nbdev", "jupyterlab", "notebook", "papermill", "datasets"):  # datasets: only a test uses it
    assert importlib.util.find_spec(absent) is None, absent + " should not be installed by the base wheel"
from codecomplete.jobs import jobs_dir
assert str(jobs_dir()).startswith({str(venv)!r}), jobs_dir()
print("ok", len({modules!r}))
"""
    out = run([str(venv / "bin" / "python"), "-c", check], cwd=tmp_path)
    assert out.stdout.startswith("ok")
    cli = run([str(venv / "bin" / "codecomplete"), "config", "curate"], cwd=tmp_path)
    assert "languages" in cli.stdout
    bad = subprocess.run([str(venv / "bin" / "codecomplete"), "run", "curate", "--run", "x"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1 and "pip install 'codecomplete[jobs]'" in bad.stderr
