"""The lm-evaluation-harness adapter, called with lm_eval's own Instance objects (offline)."""

from __future__ import annotations

import math

import pytest

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def adapter(eval_lm):
    from aquila.eval.lm_eval_adapter import AquilaLM

    return AquilaLM(lm=eval_lm)


def _instance(kind, args, i=0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def test_is_an_lm_eval_model(adapter):
    from lm_eval.api.model import LM
    from lm_eval.api.registry import get_model

    assert isinstance(adapter, LM)
    assert get_model("aquila").__name__ == "AquilaLM"


def test_loglikelihood_contract(adapter, eval_lm):
    pairs = [("In the beginning", " God created"), ("中华人民", "共和国")]
    out = adapter.loglikelihood([_instance("loglikelihood", p, i) for i, p in enumerate(pairs)])
    assert len(out) == 2 and all(isinstance(lp, float) and isinstance(g, bool) for lp, g in out)
    direct = eval_lm.loglikelihood(pairs)
    assert [lp for lp, _ in out] == [r.logprob for r in direct]


def test_loglikelihood_rolling_contract(adapter):
    short, longer = "And God said.", "And God said, Let there be light: and there was light."
    a, b = adapter.loglikelihood_rolling(
        [
            _instance("loglikelihood_rolling", (short,)),
            _instance("loglikelihood_rolling", (longer,), 1),
        ]
    )
    assert math.isfinite(a) and b < a < 0


def test_generate_until_contract(adapter):
    (text,) = adapter.generate_until(
        [_instance("generate_until", ("In the beginning", {"until": ["\n"], "max_gen_toks": 8}))]
    )
    assert isinstance(text, str) and "\n" not in text


def test_loads_from_a_model_dir(eval_model_dir):
    from aquila.eval.lm_eval_adapter import AquilaLM

    lm = AquilaLM.create_from_arg_string(f"path={eval_model_dir},batch_size=2")
    assert lm.lm.batch_size == 2 and lm.tokenizer_name.startswith("aquila-")


# The same items, once as aquila's `mc:` JSONL and once as an lm_eval task. target_delimiter ""
# makes lm_eval's continuation the choice itself, as aquila scores it.
MC_ROWS = [
    {
        "query": "In the beginning God created",
        "choices": [" the heaven", " 人民", " zzz"],
        "gold": 0,
    },
    {"query": "中华人民", "choices": ["共和国", " the", " x"], "gold": 0},
    {"query": "And God said, Let there be", "choices": [" light", " 中国", " qqq"], "gold": 0},
    {"query": "Jesus wept", "choices": [".", "日报", " and the"], "gold": 2},
    {"query": "北京", "choices": ["市", " God", "zz"], "gold": 1},
    {"query": "the LORD", "choices": [" is my shepherd", " 新华社", "!!"], "gold": 0},
]
TASK_YAML = """task: aquila_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""


@pytest.fixture
def local_task(tmp_path, monkeypatch):
    """A task dir for lm_eval (YAML + JSONL); nothing is downloaded and the datasets cache is
    private to the test."""
    import json

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in MC_ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "aquila_local_mc.yaml").write_text(TASK_YAML.format(data=data))
    return tasks, data


def test_simple_evaluate_on_a_local_task_equals_aquila_eval(local_task, eval_model_dir, capsys):
    import json

    from lm_eval.tasks import TaskManager

    from aquila.cli import main
    from aquila.eval.lm_eval_adapter import AquilaLM

    tasks, data = local_task
    lm = AquilaLM(path=str(eval_model_dir), batch_size=4)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=["aquila_local_mc"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
    )
    result = out["results"]["aquila_local_mc"]
    assert result["sample_len"] == len(MC_ROWS)

    assert main(["eval", str(eval_model_dir), "--tasks", f"mc:{data}", "--json", "--quiet"]) == 0
    (ours,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1]).values()
    assert ours["n"] == len(MC_ROWS)
    assert result["acc,none"] == ours["acc"]
    # Item by item: the log-likelihood lm_eval saw for each choice is aquila's own.
    by_doc = {s["doc_id"]: s for s in out["samples"]["aquila_local_mc"]}
    for i, row in enumerate(MC_ROWS):
        want = lm.lm.loglikelihood([(row["query"], c) for c in row["choices"]])
        got = [float(r[0][0]) for r in by_doc[i]["resps"]]
        assert got == pytest.approx([w.logprob for w in want], abs=1e-4), i


def test_lm_eval_command_line_runs_model_aquila(local_task, eval_model_dir, tmp_path):
    """`aquila-lm-eval --model aquila --model_args path=DIR` from the shell, as a user runs it."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    tasks, _ = local_task
    exe = shutil.which("aquila-lm-eval")  # installed with the package
    cmd = [exe] if exe else [sys.executable, "-m", "aquila.eval.lm_eval_cli"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = ["--model", "aquila", "--model_args", f"path={eval_model_dir}", "--batch_size", "4"]
    args += ["--tasks", "aquila_local_mc", "--include_path", str(tasks)]
    args += ["--output_path", str(tmp_path / "out")]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    result = json.loads(path.read_text())["results"]["aquila_local_mc"]
    assert result["alias"] == "aquila_local_mc" and 0.0 <= result["acc,none"] <= 1.0
    assert "aquila" in proc.stdout  # lm_eval's summary line names the model


def test_plain_lm_eval_command_runs_model_aquila(
    local_task, eval_model_dir, eval_lm, tmp_path, capsys
):
    """lm_eval's own `lm_eval --model aquila` from the shell (the installed aquila-lm-eval.pth
    registers the model): the score `aquila eval` gives on the same items, and aquila's own
    log-likelihood for every choice."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from aquila.cli import main

    tasks, data = local_task
    # This environment's script first (the one next to this interpreter).
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("lm_eval", path=search)
    if exe is None:
        pytest.skip("lm_eval's console script is not installed")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = ["--model", "aquila", "--model_args", f"path={eval_model_dir}", "--batch_size", "4"]
    args += ["--tasks", "aquila_local_mc", "--include_path", str(tasks)]
    args += ["--output_path", str(tmp_path / "out"), "--log_samples"]
    proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    result = json.loads(path.read_text())["results"]["aquila_local_mc"]

    assert main(["eval", str(eval_model_dir), "--tasks", f"mc:{data}", "--json", "--quiet"]) == 0
    (ours,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1]).values()
    assert ours["n"] == len(MC_ROWS)
    assert result["acc,none"] == ours["acc"]
    (samples,) = (tmp_path / "out").rglob("samples_aquila_local_mc_*.jsonl")
    by_doc = {s["doc_id"]: s for s in map(json.loads, samples.read_text().splitlines())}
    for i, row in enumerate(MC_ROWS):
        want = eval_lm.loglikelihood([(row["query"], c) for c in row["choices"]])
        got = [float(r[0][0]) for r in by_doc[i]["resps"]]
        assert got == pytest.approx([w.logprob for w in want], abs=1e-4), i
