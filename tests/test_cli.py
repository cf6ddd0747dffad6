"""The `codecomplete` command line: every bad input is one `codecomplete: error:` line naming the fix, exit status 2."""
import json
from types import SimpleNamespace
import pytest
import codecomplete.jobs
from codecomplete.cli import main


def error_of(capsys, argv, status=2) -> str:
    "Run `main(argv)`, check its exit status, and return its one-line error message."
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("codecomplete: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(autouse=True)
def fake_papermill(monkeypatch):
    "Stand in for papermill in every test: record the parameters each job gets, start no kernel."
    class ExecutionError(Exception):
        def __init__(self): self.exec_count, self.ename, self.evalue = 3, "ValueError", "boom"
    calls = []
    def execute_notebook(src, out, parameters, **kw):
        calls.append(parameters)
        if parameters.get("dataset_name") == "fail": raise ExecutionError()
    monkeypatch.setattr(codecomplete.jobs, "_papermill", lambda: SimpleNamespace(execute_notebook=execute_notebook, PapermillExecutionError=ExecutionError))
    return calls


@pytest.mark.parametrize("param, fix", [("force=true", "force is the --force flag"),
                                        ("run_dir=runs/other", "the run folder comes from --run NAME (and --runs-root)")])
def test_flags_given_as_parameters_are_refused(capsys, tmp_path, fake_papermill, param, fix):
    err = error_of(capsys, ["run", "train", "--run", "r", "--runs-root", str(tmp_path), "-p", param])
    assert fix in err
    assert not (tmp_path / "r").exists() and not fake_papermill


def test_run_folder_that_is_a_file_or_empty_name(capsys, tmp_path, fake_papermill):
    (tmp_path / "afile").touch()
    err = error_of(capsys, ["run", "curate", "--run", "afile", "--runs-root", str(tmp_path)])
    assert f"{tmp_path / 'afile'} is a file" in err and "--run NAME" in err
    err = error_of(capsys, ["run", "curate", "--run", "", "--runs-root", str(tmp_path)])
    assert "run name '' is empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and not fake_papermill


def test_malformed_yaml_names_the_file_or_parameter(capsys, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("max_files: [1\n")
    err = error_of(capsys, ["run", "curate", "--runs-root", str(tmp_path), "--config", str(bad)])
    assert f"config file {bad} is not valid YAML: expected ',' or ']'" in err
    err = error_of(capsys, ["run", "curate", "--runs-root", str(tmp_path), "-p", "languages=[python"])
    assert "languages='[python' is not valid YAML" in err
    assert "does not exist" in error_of(capsys, ["run", "curate", "--runs-root", str(tmp_path), "--config", str(tmp_path / "no.yaml")])


@pytest.mark.parametrize("words, hint", [(["languages=[python,", "go]"], "quote a value that has spaces: -p 'languages=[python, go]', or write it without spaces"),
                                         (["max_files=10", "dataset_name=x"], "give each parameter its own -p: -p max_files=10 -p dataset_name=x")])
def test_a_value_split_by_the_shell_says_how_to_quote(capsys, tmp_path, words, hint):
    assert hint in error_of(capsys, ["run", "curate", "--runs-root", str(tmp_path), "-p", *words])


def test_messages_name_the_key_and_the_job(capsys, tmp_path):
    err = error_of(capsys, ["run", "train", "--runs-root", str(tmp_path), "-p", "vocab_size=1024"])
    assert "vocab_size belongs to the tokenizer job" in err and "codecomplete run tokenizer --run NAME -p vocab_size=1024, or run pipeline" in err
    assert "max_files=-5 is out of range; use >= 0" in error_of(capsys, ["run", "curate", "--runs-root", str(tmp_path), "-p", "max_files=-5"])


def test_complete_errors_are_one_line(capsys, tmp_path):
    src = tmp_path / "x.py"
    src.write_text("a = 1\nb = 2\nc = 3\n")
    assert "--line 9 is outside the file's 3 lines" in error_of(capsys, ["complete", str(src), "--line", "9"])
    assert "is not a model folder" in error_of(capsys, ["complete", str(src), "--line", "1", "--model", str(tmp_path / "model")])
    assert f"{tmp_path / 'y.py'} is not a file" in error_of(capsys, ["complete", str(tmp_path / "y.py"), "--line", "1"])


def test_config_pipeline_lists_every_job(capsys):
    assert main(["config", "pipeline"]) == 0
    out = capsys.readouterr().out
    for job, cls in [("curate", "CurateConfig"), ("tokenizer", "TokenizerConfig"), ("train", "PackConfig"),
                     ("train", "TrainConfig"), ("evaluate", "EvaluateConfig")]:
        assert f"# {job} job" in out and f"## {cls}" in out, (job, cls)
    assert "vocab_size (int" in out and "\nforce (" not in out


def test_text_settings_reach_the_job_as_written(capsys, tmp_path, fake_papermill):
    assert main(["run", "curate", "--run", "r", "--runs-root", str(tmp_path), "-p", "dataset_name=1.10", "-p", "seed=0777",
                 "-p", "license=yes", "-p", "languages=[python, go]", "--force"]) == 0
    got = fake_papermill[-1]
    assert (got["dataset_name"], got["license"], got["seed"], got["languages"], got["force"]) == ("1.10", "yes", 777, ["python", "go"], True)
    assert json.loads((tmp_path / "r" / "jobs" / "01_curate.params.json").read_text())["dataset_name"] == "1.10"


def test_a_failed_job_exits_1(capsys, tmp_path, fake_papermill):
    assert main(["run", "curate", "--run", "r", "--runs-root", str(tmp_path), "-p", "dataset_name=fail"]) == 1
    err = capsys.readouterr().err
    assert "job 'curate' failed in cell 3 with ValueError: boom" in err and "01_curate.ipynb" in err


def test_config_yaml_values_are_read_by_the_field_type_like_p_values(tmp_path, fake_papermill):
    "`seed: 0777` is 777 (not YAML 1.1's octal 511), `dataset_name: 1.10` stays the text, `license: no` stays `no`."
    yml = tmp_path / "params.yaml"
    yml.write_text("seed: 0777\ndataset_name: 1.10\nlicense: no\ncard_dir: ''\n")
    assert main(["run", "curate", "--run", "y", "--runs-root", str(tmp_path), "--config", str(yml)]) == 0
    assert main(["run", "curate", "--run", "p", "--runs-root", str(tmp_path),
                 "-p", "seed=0777", "-p", "dataset_name=1.10", "-p", "license=no", "-p", "card_dir="]) == 0
    from_yaml, from_p = fake_papermill
    assert (from_yaml["seed"], from_yaml["dataset_name"], from_yaml["license"], from_yaml["card_dir"]) == (777, "1.10", "no", "")
    assert {k: v for k, v in from_yaml.items() if k != "run_dir"} == {k: v for k, v in from_p.items() if k != "run_dir"}


@pytest.mark.parametrize("argv", [["config", job] for job in [*codecomplete.jobs.JOBS, "pipeline"]] + [["--help"], ["run", "--help"],
                                  ["run", "train", "--run", "mine", "--runs-root", "{tmp}", "-p", "presett=tiny"]])
def test_light_commands_import_no_torch(argv, tmp_path):
    "`config`, `--help` and `run` up to its kernel check configs from `codecomplete.stages`, so they load neither torch nor transformers."
    import subprocess, sys
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = f"import sys; from codecomplete.cli import main\ntry: main({argv!r})\nexcept SystemExit: pass"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=120)
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "codecomplete.cli" in loaded and (done.stdout or "did you mean 'preset'" in done.stderr), done.stderr[-2000:]
    assert not loaded & {"torch", "transformers"}, f"codecomplete {' '.join(argv)} imported {sorted(loaded & {'torch', 'transformers'})}"
