"""`pavdm eval` end to end on a short video (every schedule scored, a table, results and plots written); its summary."""

import json
import math

import numpy as np
import pytest

from orchestrator.entry.cli import main
from training.evaluation.videos import METRICS, Scored, report, summarise


def test_eval_writes_table_results_and_plots(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--seconds", "4", "--prompt", "a red circle bouncing", "--kinds", "progressive", "chunked",
                 "--out-dir", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [v["kind"] for v in results["videos"]] == ["progressive", "chunked"]
    assert all(len(v["segments"]) == 2 for v in results["videos"])  # two 2-s segments of a 4-s video
    table = (out / "report.md").read_text()
    assert all(f"| progressive | {m} |" in table and f"| chunked | {m} |" in table for m in METRICS)
    assert all((out / f"{m}.png").stat().st_size > 0 for m in METRICS) and (out / "strip.png").is_file()
    assert "results in" in capsys.readouterr().out


def video(first: float, last: float, seconds: float = 20.0) -> Scored:
    """A scored video whose every metric is `first` over its first half and `last` over its second (2-s segments)."""
    segments = [{"start": t, "end": t + 2.0, **dict.fromkeys(METRICS, first if t < seconds / 2 else last)}
                for t in range(0, int(seconds), 2)]
    return Scored("progressive", "a red circle bouncing", 0, segments)


def test_summary_change_comes_with_an_interval_over_resampled_videos():
    same = summarise([video(1.0, 0.5)] * 4, 20.0)["progressive"]["presence"]
    assert same["change"] == same["low"] == same["high"] == -0.5  # identical videos: no spread
    mixed = summarise([video(1.0, 0.5), video(1.0, 1.5), video(1.0, 0.9), video(1.0, 1.1)], 20.0)
    row = mixed["progressive"]["presence"]
    assert row["change"] == 0.0 and -0.5 <= row["low"] < -0.1 and 0.1 < row["high"] <= 0.5
    blank = summarise([video(math.nan, math.nan)], 20.0)["progressive"]["presence"]
    assert all(math.isnan(blank[k]) for k in ("first", "change", "low", "high"))
    assert "| progressive | presence | 1.000 | 1.000 | +0.0% |" in report(mixed, 20.0)


def test_eval_stills_scores_each_prompt_and_draws_a_row_of_stills_per_prompt(tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "stills"
    prompts = ["a red circle bouncing", "a blue square bouncing"]
    code = main(["eval", "--stills", "--seeds", "0", "1", "2", "--prompt", prompts[0], "--prompt", prompts[1],
                 "--out-dir", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "stills.json").read_text())
    presence = results["presence"]
    assert results["seeds"] == [0, 1, 2] and list(presence) == [*prompts, "mean"]
    assert all(0 <= presence[p] <= 1 for p in prompts) and presence["mean"] == (presence[prompts[0]]
                                                                                 + presence[prompts[1]]) / 2
    assert matplotlib.image.imread(out / "stills.png").shape[:2] == (2 * 34 * 3, 3 * 34 * 3)  # 2 rows of 3 stills
    assert "a blue square bouncing" in capsys.readouterr().out


def test_a_still_depends_on_its_seed_alone_not_on_the_batch_it_is_drawn_in():
    from actors.backends.factory import build_backend
    from orchestrator.state.settings import load_config
    from training.evaluation.stills import sample_stills

    backend = build_backend(load_config([], [], model="tiny").model)
    together = sample_stills(backend, "a red circle bouncing", [3, 4], steps=4, shift=1.5)  # [2, 1, 32, 32, 3]
    alone = sample_stills(backend, "a red circle bouncing", [4], steps=4, shift=1.5)
    assert together.shape == (2, 1, 32, 32, 3) and together.dtype == np.uint8
    assert np.abs(together[1].astype(int) - alone[0]).max() <= 1  # batched float sums may round one level apart
    assert (together[0] != together[1]).any()


def test_eval_refuses_a_caption_the_probe_cannot_score_before_any_work(tmp_path, capsys):
    for stills in ([], ["--stills"]):
        out = tmp_path / f"eval{len(stills)}"
        assert main(["eval", *stills, "--prompt", "a purple dog bouncing", "--out-dir", str(out), "--quiet"]) == 2
        assert "unknown colour 'purple'" in capsys.readouterr().err and not out.exists()


def test_a_still_of_several_frames_draws_them_together():
    from actors.backends.factory import build_backend
    from orchestrator.state.settings import load_config
    from training.evaluation.stills import sample_stills

    backend = build_backend(load_config([], [], model="tiny").model)
    chunk = sample_stills(backend, "a red circle bouncing", [4], steps=4, shift=1.5, frames=3)  # [1, 3, 32, 32, 3]
    assert chunk.shape == (1, 3, 32, 32, 3) and (chunk[0, 0] != chunk[0, 1]).any()


@pytest.mark.parametrize("options, message", [
    (["--stills", "--seconds", "10"], "--seconds and --kinds do not apply"),
    (["--stills", "--kinds", "progressive"], "--seconds and --kinds do not apply"),
    (["--stills", "--frames", "0"], "--frames must be >= 1, got 0"),
    (["--frames", "3"], "--frames applies to --stills only"),
])
def test_eval_refuses_options_that_do_not_apply(tmp_path, capsys, options, message):
    out = tmp_path / "eval"
    assert main(["eval", *options, "--out-dir", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err and not out.exists()
