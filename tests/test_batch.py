"""`pavdm batch`: one video per row, a manifest, failures per row, reruns that redo only changed settings."""

import csv
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import probe_mp4

import orchestrator.entry.batch
from orchestrator.core.errors import RunFailed
from orchestrator.entry.batch import MANIFEST, run_batch
from orchestrator.state.settings import load_config

SAME_FIELDS = ["id", "prompt", "prompts", "seed", "frames", "seconds", "status", "error"]


def rows() -> list[dict]:
    colours = ["red", "green", "blue", "yellow", "magenta", "cyan"]
    listed = [{"id": f"clip-{i:02d}", "prompt": f"a {colours[i % 6]} circle bouncing", "seconds": 1 + i % 2,
               "seed": i} for i in range(12)]
    listed[5] = {"id": "clip-05", "prompt": "a red circle", "seconds": -3, "seed": 5}  # the invalid row
    listed[7] = {"id": "clip-07", "prompts": "0:a red circle|1:a green square", "seconds": 2, "seed": 7}
    return listed


def write_jsonl(path, listed):
    path.write_text("".join(json.dumps(row) + "\n" for row in listed))


SHORT_WINDOW = ["schedule.chunk=4", "schedule.noisy_chunks=2", "schedule.steps=2"]
"""With the analytic model: batching is the same for every model, and a few ticks a video keep the time on the
batch logic."""


def config():
    return load_config([], ["pipeline.num_cpus=0.5", "pipeline.max_streams=4", "metrics.port=0", *SHORT_WINDOW],
                       model="gaussian")


def manifest(out) -> list[dict]:
    return pq.read_table(out / MANIFEST).to_pylist()


def test_jsonl_batch_records_the_bad_row_and_a_rerun_does_no_work(tmp_path, monkeypatch):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    write_jsonl(prompts, rows())
    with pytest.raises(RunFailed, match="1 of 12 rows failed"):
        run_batch(config(), str(prompts), str(out), str(tmp_path / "runs"), progress=False)
    table = manifest(out)
    assert [row["id"] for row in table] == [f"clip-{i:02d}" for i in range(12)]
    failed = [row for row in table if row["status"] != "completed"]
    assert [row["id"] for row in failed] == ["clip-05"] and "seconds must be > 0" in failed[0]["error"]
    for row in table:
        if row["status"] == "completed":
            assert probe_mp4(out / f"{row['id']}.mp4")[0] == row["frames"] == 8 * row["seconds"]
            assert row["path"].endswith(f"{row['id']}.mp4") and row["elapsed_seconds"] > 0
    assert table[7]["prompts"] == ["0:a red circle", "1:a green square"]

    def no_pipeline(*args, **kwargs):
        raise AssertionError("a rerun must not start the pipeline")

    monkeypatch.setattr(orchestrator.entry.batch, "run_jobs", no_pipeline)
    with pytest.raises(RunFailed, match="1 of 12 rows failed"):
        run_batch(config(), str(prompts), str(out), str(tmp_path / "runs"), progress=False)
    assert [(r["id"], r["status"], r["finished_at"]) for r in manifest(out)] == \
        [(r["id"], r["status"], r["finished_at"]) for r in table]

    monkeypatch.undo()  # a rerun with a setting that changes the videos makes them again
    two = tmp_path / "two.jsonl"
    write_jsonl(two, rows()[:2])
    rescaled = config()
    rescaled.output.scale = 2
    run_batch(rescaled, str(two), str(out), str(tmp_path / "runs"), progress=False)
    again = manifest(out)
    assert [r["id"] for r in again] == ["clip-00", "clip-01"] and {r["status"] for r in again} == {"completed"}
    for new, old in zip(again, table[:2], strict=True):
        assert new["finished_at"] > old["finished_at"] and new["settings"] != old["settings"] != ""
    assert probe_mp4(out / "clip-00.mp4")[:3] == (8, 64, 64)


def test_csv_and_parquet_give_the_same_manifest(tmp_path):
    listed = rows()
    with open(tmp_path / "prompts.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "prompt", "prompts", "seconds", "seed"])  # blanks where absent
        writer.writeheader()
        writer.writerows(listed)
    columns = ["id", "prompt", "prompts", "seconds", "seed"]
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in listed]),
                   tmp_path / "prompts.parquet")
    manifests = []
    for name in ("prompts.csv", "prompts.parquet"):
        out = tmp_path / f"out-{name}"  # given as a pyarrow.fs URI, as object stores are
        with pytest.raises(RunFailed):
            run_batch(config(), (tmp_path / name).as_uri(), out.as_uri(), str(tmp_path / "runs"), progress=False)
        manifests.append([{key: row[key] for key in SAME_FIELDS} for row in manifest(out)])
    assert manifests[0] == manifests[1]
    assert sum(row["status"] == "completed" for row in manifests[0]) == 11
    assert manifest(out)[0]["path"] == (out / "clip-00.mp4").as_uri()


def test_cli_batch_errors_and_exit_codes(tmp_path):
    def batch(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator.entry.cli", "batch", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)

    missing = batch("nope.jsonl", "--out", "out")
    assert missing.returncode == 2 and "cannot read prompt list" in missing.stderr
    (tmp_path / "p.txt").write_text("a red circle\n")
    assert "must end in .jsonl, .csv or .parquet" in batch("p.txt", "--out", "out").stderr
    write_jsonl(tmp_path / "two.jsonl", [{"prompt": "a red circle", "seconds": 1}, {"prompt": "a blue square",
                                                                                    "seconds": 1, "id": "b"}])
    (tmp_path / "two.jsonl").write_text((tmp_path / "two.jsonl").read_text() + "{broken\n")
    done = batch("two.jsonl", "--out", "out", "--quiet", "--model", "gaussian", *SHORT_WINDOW,
                 "pipeline.num_cpus=0.5", "metrics.port=0")
    assert done.returncode == 1 and "1 of 3 rows failed" in done.stderr
    table = pq.read_table(tmp_path / "out" / MANIFEST).to_pylist()
    assert [(r["id"], r["status"]) for r in table] == [("row-00000", "completed"), ("b", "completed"),
                                                      ("row-00002", "failed")]
    assert "line 3 is not valid JSON" in table[2]["error"]
