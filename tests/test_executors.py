"""One engine, two executors: what runs in process makes the videos Ray makes, without Ray, on the threads asked."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from conftest import probe_mp4
from test_batch import SHORT_WINDOW

from orchestrator.engine.local import InProcessExecutor
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.runner import run_video
from orchestrator.entry.batch import run_batch
from orchestrator.state.runs import RunFolder
from orchestrator.state.settings import load_config


def frames_of(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_batch_in_process_makes_the_videos_of_the_ray_pipeline(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"v{i}", "prompt": f"a circle {i}", "seconds": 1 + i, "seed": 10 + i} for i in range(3)]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for executor in ("process", "ray"):
        config = load_config([], [f"pipeline.executor={executor}", "pipeline.num_cpus=0.5", "pipeline.max_streams=2",
                                  "metrics.port=0", *SHORT_WINDOW], model="gaussian")
        run_batch(config, str(prompts), str(tmp_path / executor), str(tmp_path / "runs"), progress=False)
    for row in rows:
        made = [frames_of(tmp_path / executor / f"{row['id']}.mp4") for executor in ("process", "ray")]
        assert made[0].shape[0] == 8 * row["seconds"] and np.array_equal(*made), row["id"]


SCRIPT = """
import os, sys, torch
from orchestrator.entry.cli import main
args = ['generate', '--model', 'gaussian', '--quiet', '--seconds', '1', 'metrics.port=0', '--out']
assert main([*args, 'one.mp4', 'pipeline.threads=1']) == 0
assert torch.get_num_threads() == 1, torch.get_num_threads()
assert main([*args, 'all.mp4']) == 0
assert torch.get_num_threads() == len(os.sched_getaffinity(0)), torch.get_num_threads()
loaded = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))
assert not loaded, loaded
"""


def test_in_process_runs_never_load_ray_and_use_the_threads_asked_for(tmp_path):
    """The default run (one stage, no cluster named) is the in-process executor: the engine and it import no Ray,
    torch runs pipeline.threads threads, and every core this process may use when that is 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "one.mp4").exists() and (tmp_path / "all.mp4").exists()


@pytest.mark.parametrize("stages, executor", [(0, "ray"), (1, "nowhere")])
def test_an_executor_that_cannot_be_is_refused(stages, executor):
    with pytest.raises(Exception, match="pipeline.executor"):
        load_config([], [f"pipeline.stages={stages}", f"pipeline.executor={executor}"], model="gaussian")


def test_the_time_to_the_first_frame_is_reported_and_exported(tmp_path):
    config = load_config([], ["metrics.port=0", f"run.root={tmp_path / 'runs'}", f"output.out={tmp_path / 'v.mp4'}",
                              "seconds=2", *SHORT_WINDOW], model="gaussian")
    metrics = PipelineMetrics("ttff", 1)
    run = RunFolder.create(config)
    job = run_video(InProcessExecutor(config), config, run, metrics)
    exported = metrics.registry.get_sample_value("pavdm_first_frame_seconds", {"run_id": run.run_id})
    assert job.first_frame_seconds is not None and 0 < exported == job.first_frame_seconds < 60
    assert probe_mp4(tmp_path / "v.mp4")[0] == 16
