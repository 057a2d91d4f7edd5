"""Reward benchmark harness: pairwise accuracy with the reference benchmarks' tie handling, per-category and
macro accuracy, calibration, and the readers of each benchmark format."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmreward import load_reward
from mmreward.bench import BenchItem, calibration, evaluate, load_benchmark, main, score_candidates
from mmreward.errors import RewardError


def test_accuracy_counts_pairs_of_different_rank_and_half_credits_score_ties():
    items = [BenchItem([("a", "p")] * 3, [1, 2, 2], "x"),  # pairs (0,1), (0,2) count; (1,2) is tied
             BenchItem([("a", "p")] * 2, [2, 1], "y")]
    scores = [[3.0, 1.0, 3.0], [0.0, 1.0]]
    res = evaluate(items, scores)
    assert res["pairs"] == 3 and res["tied_pairs"] == 1 and res["items"] == 2
    assert res["per_category"]["x"] == {"accuracy": 0.75, "pairs": 2}  # (0,1) right, (0,2) equal scores: half
    assert res["per_category"]["y"] == {"accuracy": 1.0, "pairs": 1}
    assert res["accuracy"] == pytest.approx(2.5 / 3) and res["macro_accuracy"] == pytest.approx(0.875)
    with pytest.raises(RewardError, match="no untied pairs"):
        evaluate([BenchItem([("a", "p")] * 2, [1, 1])], [[0.0, 1.0]])


def test_calibration_bins_confidence_against_accuracy():
    p = np.array([0.9, 0.9, 0.2, 0.55, 0.45])
    wins = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    res = calibration(p, wins, bins=5)  # confidences 0.9, 0.9, 0.8, 0.55, 0.55
    by_bin = {tuple(b["bin"]): b for b in res["bins"]}
    assert by_bin[(0.5, 0.6)]["n"] == 2 and by_bin[(0.5, 0.6)]["accuracy"] == 0.5
    assert by_bin[(0.8, 0.9)]["n"] == 1 and by_bin[(0.8, 0.9)]["accuracy"] == 1.0  # 0.8 is correct (second wins)
    assert by_bin[(0.9, 1.0)]["n"] == 2 and by_bin[(0.9, 1.0)]["accuracy"] == 0.5
    want_ece = 0.4 * abs(0.55 - 0.5) + 0.2 * abs(0.8 - 1.0) + 0.4 * abs(0.9 - 0.5)
    assert res["ece"] == pytest.approx(want_ece)


def _png(path, value):
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(path)
    return path.name


def test_benchmark_formats_map_to_candidates_ranks_and_categories(tmp_path):
    a, b, c = (_png(tmp_path / f"{n}.png", v) for n, v in (("a", 20), ("b", 120), ("c", 220)))
    (tmp_path / "ir.json").write_text(json.dumps([{"id": 1, "prompt": "a cat", "generations": [a, b, c], "ranking": [2, 1, 2]}]))
    (tmp_path / "hpd.json").write_text(json.dumps([{"prompt": "a dog", "image_path": [a, b], "rank": [1, 2]}]))
    (tmp_path / "vlrb.jsonl").write_text(json.dumps({"id": "q", "query": "What is shown?", "response": ["a cat", "a car"],
                                                     "human_ranking": [1, 0], "image": a, "query_source": "POVID"}) + "\n")
    (tmp_path / "mmrb.json").write_text(json.dumps([{"Text": "Q?", "Image": b, "Output1": "x", "Output2": "y",
                                                     "Better": "Output2", "Category": "safety"}]))
    ir = load_benchmark(tmp_path / "ir.json")
    assert ir[0].candidates == [(str(tmp_path / p), "a cat") for p in (a, b, c)] and ir[0].ranks == [2, 1, 2]
    assert load_benchmark(tmp_path / "hpd.json")[0].ranks == [1, 2]
    vl = load_benchmark(tmp_path / "vlrb.jsonl")[0]
    assert vl.category == "hallucination" and vl.ranks == [1, 0]
    assert vl.candidates == [(str(tmp_path / a), "What is shown?\na cat"), (str(tmp_path / a), "What is shown?\na car")]
    mm = load_benchmark(tmp_path / "mmrb.json")[0]
    assert mm.ranks == [1.0, 0.0] and mm.category == "safety" and mm.candidates[1][1] == "Q?\ny"
    other = tmp_path / "imgs"
    other.mkdir()
    assert load_benchmark(tmp_path / "ir.json", images=str(other))[0].candidates[0][0] == str(other / a)
    (tmp_path / "bad.json").write_text(json.dumps([{"Text": "Q", "Image": a, "Output1": "x", "Output2": "y", "Better": "3"}]))
    with pytest.raises(RewardError, match="Better must be"):
        load_benchmark(tmp_path / "bad.json")
    (tmp_path / "odd.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(RewardError, match="unknown benchmark record"):
        load_benchmark(tmp_path / "odd.json")


def test_cli_scores_a_preference_file_against_its_noise_free_truth(tmp_path, open_clip_dir):
    from mmreward.preference import PreferenceExample, write_preferences

    names = [_png(tmp_path / f"{i}.png", v) for i, v in enumerate((10, 80, 160, 240))]
    ex = [PreferenceExample("a red circle", [str(tmp_path / names[0]), str(tmp_path / names[1])], [1.0, 0.0], "k1", truth=[0.0, 1.0]),
          PreferenceExample("a blue star", [str(tmp_path / names[2]), str(tmp_path / names[3])], [1.0, 0.0], "k2", truth=[1.0, 0.0])]
    path = write_preferences(tmp_path / "prefs.jsonl", ex)
    res = main(["--reward", f"clip:{open_clip_dir}", "--data", str(path), "--out", str(tmp_path / "r.json"), "--no-progress"])
    reward = load_reward(f"clip:{open_clip_dir}")
    with torch.no_grad():
        s = [reward(torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255 for p in e.images]),
                    e.prompt).tolist() for e in ex]
    truth_right = [(s[0][1] > s[0][0]), (s[1][0] > s[1][1])]  # scored against truth, not the (noisy) label
    assert res["accuracy"] == pytest.approx(np.mean(truth_right))
    assert set(res["per_category"]) == {"k1", "k2"}
    assert json.loads((tmp_path / "r.json").read_text())["pairs"] == 2 and (tmp_path / "r.md").is_file()
    items = load_benchmark(path, labels="label")
    assert evaluate(items, score_candidates(reward, items, progress=False))["accuracy"] == pytest.approx(np.mean([not truth_right[0], truth_right[1]]))
    with pytest.raises(RewardError, match="does not exist"):
        main(["--reward", f"clip:{open_clip_dir}", "--data", str(tmp_path / "none.json")])


def test_line_chart_keeps_the_legend_beside_the_plot(tmp_path):
    """The benchmarks' charts (matplotlib): every series is drawn in its colour inside the axes, and the
    legend sits right of the axes, so a long name widens the image instead of covering a line."""
    import importlib.util

    from PIL import Image

    # loaded by path: putting benchmarks/ on sys.path would shadow the packages (benchmarks/vlm_rl.py)
    spec = importlib.util.spec_from_file_location("charts", Path(__file__).resolve().parents[1] / "benchmarks" / "charts.py")
    charts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(charts)
    line_chart = charts.line_chart

    series = {"a rather long series name": [(0.0, 0.0), (1.0, 1.0)], "b": [(0.0, 1.0), (1.0, 0.0)]}
    fig = line_chart(series, "x", "y", tmp_path / "c.png")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == list(series)
    assert [line.get_xydata().tolist() for line in ax.get_lines()] == [[[0, 0], [1, 1]], [[0, 1], [1, 0]]]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 > axes.x1  # beside the plot, not on it
    img = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert img.shape[1] > img.shape[0]
    blue, orange = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours
    for c in (blue, orange):
        assert (np.abs(img.astype(int) - c).sum(-1) < 30).sum() > 50
    with pytest.raises(ValueError, match="no points"):
        line_chart({"a": []}, "x", "y", tmp_path / "d.png")


