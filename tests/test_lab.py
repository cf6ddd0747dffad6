"""`make lab`: JupyterLab starts on loopback, serves the notebooks of nbs/, and runs them on this environment's python."""
import json, os, re, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import psutil, pytest

ROOT = Path(__file__).resolve().parent.parent


def lab_command(port: int, token: str) -> str:
    "The recipe of `make lab` from the Makefile, with this environment's bin folder, a free port and a token."
    recipe = re.search(r"^lab:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    args = f"--no-browser --ServerApp.port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    return recipe.replace("$(BIN)", str(Path(sys.executable).parent)).replace("$$", "$").replace("$(LAB_ARGS)", args) \
                 .replace("$(LAB_ROOT)", "--allow-root" if os.geteuid() == 0 else "")


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r: return r.status, r.read()


def test_make_lab_serves_a_notebook_of_nbs_on_loopback(tmp_path):
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    proc = subprocess.Popen(["bash", "-c", "exec env " + lab_command(port, token)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try: status, body = get(f"{base}/api/contents/00_config.ipynb?token={token}"); break
            except OSError: time.sleep(0.5)
        assert status == 200, f"JupyterLab did not serve nbs/00_config.ipynb within 90 s (exit {proc.poll()})"
        served = json.loads(body)
        assert served["type"] == "notebook" and len(served["content"]["cells"]) == len(json.loads((ROOT / "nbs" / "00_config.ipynb").read_text())["cells"])
        assert get(f"{base}/lab?token={token}")[0] == 200
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert listening and {a.ip for a in listening} <= {"127.0.0.1"}, listening  # loopback only
        spec = json.loads(get(f"{base}/api/kernelspecs?token={token}")[1])["kernelspecs"]["python3"]["spec"]
        # the kernel is the project's environment: `make lab` puts its bin folder first on PATH, where the spec's python is found
        python = shutil.which(spec["argv"][0], path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        assert Path(python).parent == Path(sys.executable).parent, spec["argv"]
        with pytest.raises(urllib.error.HTTPError, match="403"): get(f"{base}/api/contents/00_config.ipynb")  # a token is needed
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert proc.returncode is not None
    with pytest.raises(OSError): get(f"{base}/api?token={token}")  # stopped: nothing answers on the port any more
