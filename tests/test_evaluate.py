"""`pavdm eval` end to end on a short video: every schedule scored, a table, results and plots written."""

import json

from orchestrator.cli import main
from training.evaluate import METRICS


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
