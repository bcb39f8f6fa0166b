"""CLUE-style classification sets on hand-made items in the upstream file layouts."""

from __future__ import annotations

import json
import math

import pytest

from aquila.cli import main
from aquila.errors import UserError
from aquila.eval.clue import read_bustm, read_cluewsc, read_eprstmt, read_ocnli, read_tnews
from aquila.eval.tasks import get_task


def _json_lines(path, rows):
    # CLUE and FewCLUE ship JSON lines under a .json name.
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


TNEWS = [  # CLUE tnews_public/dev.json
    {
        "label": "103",
        "label_desc": "news_sports",
        "sentence": "女排联赛决赛打响，主场球迷热情高涨",
        "keywords": "女排,联赛,决赛",
    },
    {
        "label": "104",
        "label_desc": "news_finance",
        "sentence": "央行宣布降准，释放长期资金",
        "keywords": "",
    },
]
OCNLI = [  # CLUE ocnli_public/dev.json
    {
        "level": "easy",
        "sentence1": "他昨天晚上在图书馆看了三个小时书。",
        "sentence2": "他昨天去过图书馆。",
        "label": "entailment",
        "label0": "entailment",
        "genre": "lit",
        "prem_id": "lit_1",
        "id": 0,
    },
    {"sentence1": "今天下雨了。", "sentence2": "今天是晴天。", "label": "contradiction", "id": 1},
    {"sentence1": "会议推迟了。", "sentence2": "会议在周五。", "label": "-", "id": 2},
]
BUSTM = [  # FewCLUE bustm/dev_few_all.json
    {"id": 5, "sentence1": "怎么更改绑定的手机号", "sentence2": "绑定的手机号怎么换", "label": "1"},
    {"id": 6, "sentence1": "明天会下雨吗", "sentence2": "怎么开通会员", "label": "0"},
]
EPRSTMT = [  # FewCLUE eprstmt/dev_few_all.json
    {"id": 23, "sentence": "质量很好，物流也快，非常满意", "label": "Positive"},
    {"id": 24, "sentence": "用了两天就坏了，太失望了", "label": "Negative"},
]
CLUEWSC = [  # CLUEWSC2020 dev.json / FewCLUE cluewsc
    {
        "target": {"span2_index": 12, "span1_index": 0, "span1_text": "小明", "span2_text": "他"},
        "idx": 0,
        "label": "true",
        "text": "小明把书借给了小红，因为他已经看完了。",
    },
    {
        "target": {"span2_index": 12, "span1_index": 7, "span1_text": "小红", "span2_text": "他"},
        "idx": 1,
        "label": "false",
        "text": "小明把书借给了小红，因为他已经看完了。",
    },
]


def test_tnews(tmp_path):
    ex = read_tnews(_json_lines(tmp_path / "dev.json", TNEWS))
    assert len(ex) == 2 and len(ex[0].choices) == 15
    assert ex[0].choices[ex[0].gold] == "体育" and ex[1].choices[ex[1].gold] == "财经"
    assert ex[0].context.startswith("新闻标题：女排联赛决赛打响") and ex[0].context.endswith(
        "答案："
    )
    # label alone (code) or label_desc alone both name the class
    (only_code,) = read_tnews(_json_lines(tmp_path / "a.json", [{"label": 103, "sentence": "x"}]))
    assert only_code.gold == 3
    bad = [{**TNEWS[0], "label_desc": "news_car"}]
    with pytest.raises(UserError, match=r"b\.json:1: field 'label_desc' = 'news_car' contradicts"):
        read_tnews(_json_lines(tmp_path / "b.json", bad))
    with pytest.raises(UserError, match=r"c\.json:1: field 'label' = '105' is not one of"):
        read_tnews(_json_lines(tmp_path / "c.json", [{"label": "105", "sentence": "x"}]))


def test_ocnli_skips_rows_without_a_majority_label(tmp_path):
    ex = read_ocnli(_json_lines(tmp_path / "dev.json", OCNLI))
    assert [e.choices[e.gold] for e in ex] == ["是的", "不是"]
    assert ex[0].choices == ["是的", "可能", "不是"]
    assert "由此可以推出“他昨天去过图书馆。”吗？" in ex[0].context
    with pytest.raises(UserError, match=r"x\.json:1: field 'label' = 'yes'"):
        read_ocnli(_json_lines(tmp_path / "x.json", [{**OCNLI[1], "label": "yes"}]))
    with pytest.raises(UserError, match="no labelled records"):
        read_ocnli(_json_lines(tmp_path / "y.json", [OCNLI[2]]))


def test_bustm_eprstmt(tmp_path):
    ex = read_bustm(_json_lines(tmp_path / "bustm.json", BUSTM))
    assert [e.choices[e.gold] for e in ex] == ["相同", "不同"]
    assert ex[0].context.startswith("句子一：怎么更改绑定的手机号\n句子二：绑定的手机号怎么换")
    ex = read_eprstmt(_json_lines(tmp_path / "ep.json", EPRSTMT))
    assert [e.choices[e.gold] for e in ex] == ["好评", "差评"]
    with pytest.raises(UserError, match=r"b\.json:1: field 'label' = '2'"):
        read_bustm(_json_lines(tmp_path / "b.json", [{**BUSTM[0], "label": "2"}]))
    with pytest.raises(UserError, match=r"e\.json:2: field 'sentence' must be a string"):
        read_eprstmt(_json_lines(tmp_path / "e.json", [EPRSTMT[0], {**EPRSTMT[1], "sentence": 3}]))


def test_cluewsc(tmp_path):
    ex = read_cluewsc(_json_lines(tmp_path / "dev.json", CLUEWSC))
    assert [e.choices[e.gold] for e in ex] == ["是", "否"]
    assert ex[0].context.endswith("问题：句中的“他”指的是“小明”吗？是或否？\n答案：")
    broken = {**CLUEWSC[0], "target": {**CLUEWSC[0]["target"], "span2_index": 99}}
    with pytest.raises(UserError, match=r"w\.json:1: target: field 'span2_index' = 99"):
        read_cluewsc(_json_lines(tmp_path / "w.json", [broken]))
    missing = {**CLUEWSC[0], "target": {"span1_text": "小明", "span1_index": 0}}
    with pytest.raises(UserError, match=r"m\.json:1: target: missing field 'span2_text'"):
        read_cluewsc(_json_lines(tmp_path / "m.json", [missing]))


def test_clue_tasks_through_aquila_eval(eval_model_dir, tmp_path, capsys):
    sets = {"tnews": TNEWS, "ocnli": OCNLI, "bustm": BUSTM, "eprstmt": EPRSTMT, "cluewsc": CLUEWSC}
    specs = []
    for fmt, rows in sets.items():
        d = tmp_path / fmt
        d.mkdir()
        specs.append(f"{fmt}:{_json_lines(d / 'dev.json', rows)}")
    assert get_task(specs[0]).lang == "zh"
    argv = ["eval", str(eval_model_dir), "--tasks", ",".join(specs), "--json", "--quiet"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(res) == [f"{fmt}:dev" for fmt in sets]
    assert math.isclose(res["tnews:dev"]["chance"], 1 / 15)
    assert math.isclose(res["ocnli:dev"]["chance"], 1 / 3) and res["ocnli:dev"]["n"] == 2
    assert all(0 <= r["acc"] <= 1 for r in res.values())
