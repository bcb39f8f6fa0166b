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


@pytest.mark.slow
def test_harness_runs_a_local_task_offline(eval_lm, tmp_path, monkeypatch):
    """lm_eval.simple_evaluate on a task YAML that points at a local JSONL file (~20 s)."""
    import json

    from lm_eval.tasks import TaskManager

    from aquila.eval.lm_eval_adapter import AquilaLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = [
        {
            "query": "In the beginning God created",
            "choices": [" the heaven", " 人民", " zzz"],
            "gold": 0,
        },
        {"query": "中华人民", "choices": ["共和国", " the", " x"], "gold": 0},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(
        "task: aquila_local_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{query}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    out = lm_eval.simple_evaluate(
        model=AquilaLM(lm=eval_lm),
        tasks=["aquila_local_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
    )
    result = out["results"]["aquila_local_mc"]
    assert result["sample_len"] == 2 and 0.0 <= result["acc,none"] <= 1.0
