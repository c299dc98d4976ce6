"""Steering a video while it is made, without a pipeline: prompt changes land on the next chunk to enter (at once or
blended over a transition), a stop ends the video with the last chunk that entered, the record remakes the same
ticks, and checkpoints from before a change still resume."""

import dataclasses

import pytest
import torch

from actors.backends.base import PromptEncodings
from orchestrator.core.config import Config
from orchestrator.core.errors import UserError
from orchestrator.core.frames import FrameCount
from orchestrator.core.prompts import Blend, PromptSchedule, split_entry, timed_entry
from orchestrator.core.sampler import Window
from orchestrator.core.schedule import ticks
from orchestrator.engine.jobs import StreamJob
from orchestrator.engine.plan import plan_video
from orchestrator.engine.steering import steer
from orchestrator.state.run_state import SinkState, checkpoint_meta, make_checkpoint, start_from
from orchestrator.state.runs import RunFolder

FRAMES = FrameCount()


def live_job(tmp_path, seconds: float = 60.0) -> StreamJob:
    config = Config(prompts=["a red circle"], seconds=seconds, fps=8.0)
    config.schedule.chunk, config.schedule.noisy_chunks, config.schedule.steps = 3, 4, 12
    config.run.root = str(tmp_path / "runs")
    return StreamJob(config, RunFolder.create(config))


def drive(job: StreamJob, asks: dict) -> list[tuple[int, str]]:
    """Make the job's ticks as an executor would, steering before each; `asks` maps a tick index to a callable run
    just before it. Returns (tick index, prompt conditioning it) per tick made."""
    plan = plan_video(job.config, FRAMES)
    schedule = ticks(plan.geometry, plan.num_chunks)
    upcoming, made = next(schedule), []
    while upcoming is not None:
        if upcoming.index in asks:
            asks[upcoming.index]()
        revision = steer(job.steering, job.config, job.run, upcoming, 0, FRAMES)
        if revision is not None:
            plan = revision.plan
            if revision.remaining is not None:
                schedule = revision.remaining
                upcoming = next(schedule)
        made.append((upcoming.index, plan.prompts.of(upcoming.cond_chunk)))
        upcoming = next(schedule, None)
    return made


def test_changes_take_the_next_chunks_in_turn_and_a_stop_ends_after_the_window_drains(tmp_path):
    job = live_job(tmp_path)
    changes = []

    def ask_twice():
        changes.extend([job.steering.change_prompt("a green square"), job.steering.change_prompt("a blue circle")])
        job.steering.stop()

    made = drive(job, {10: ask_twice})  # tick 10 is substep 1 of shift 3: chunk 4 enters next
    assert [(c.chunk, c.seconds) for c in changes] == [(4, 1.5), (5, 1.875)] and all(c.done.is_set() for c in changes)
    saved = job.run.load_config()
    assert saved.prompts == ["a red circle", "1.5:a green square", "1.875:a blue circle"]
    assert saved.seconds == 6 * 3 / 8 and job.steering.stopped.is_set()  # chunks 0..5 entered: six chunks
    # the ticks made are exactly those of the recorded video, each conditioned as the record says
    plan = plan_video(saved, FRAMES)
    assert plan.num_chunks == 6
    assert made == [(tick.index, plan.prompts.of(tick.cond_chunk)) for tick in ticks(plan.geometry, 6)]


def test_a_change_after_the_last_chunk_entered_is_refused_and_a_stop_then_changes_nothing(tmp_path):
    job = live_job(tmp_path, seconds=1.5)  # four chunks
    late = []
    drive(job, {13: lambda: (late.append(job.steering.change_prompt("a green square")), job.steering.stop())})
    assert late[0].refused and late[0].chunk is None
    assert job.run.load_config().prompts == ["a red circle"] and job.config.seconds == 1.5
    assert job.steering.change_prompt("a blue circle").refused == "the video is stopping"


def test_a_checkpoint_from_before_a_change_resumes_and_one_it_contradicts_is_refused(tmp_path):
    job = live_job(tmp_path)
    before = job.config
    window = Window({m: torch.zeros(3, 3, 2, 2) for m in range(3, 7)})  # chunk 6 is the newest that entered
    checkpoint = make_checkpoint(21, window, SinkState(), checkpoint_meta(before, 0))
    for start, resumable in ((7 * 3 / 8, True), (6 * 3 / 8, False)):  # from chunk 7 (not entered) or chunk 6
        steered = dataclasses.replace(before, prompts=[*before.prompts, f"{start}:a green square"], seconds=30.0)
        plan = plan_video(steered, FRAMES)
        if resumable:
            assert start_from(checkpoint, steered, plan.prompts, plan.num_chunks).next_tick == 21
        else:
            with pytest.raises(UserError, match="different video settings: prompts, seconds"):
                start_from(checkpoint, steered, plan.prompts, plan.num_chunks)
    stopped = dataclasses.replace(before, seconds=6 * 3 / 8)  # ends before chunk 6: refused
    plan = plan_video(stopped, FRAMES)
    with pytest.raises(UserError, match="different video settings: seconds"):
        start_from(checkpoint, stopped, plan.prompts, plan.num_chunks)
    reseeded = dataclasses.replace(before, seed=1, seconds=30.0)
    plan = plan_video(reseeded, FRAMES)
    with pytest.raises(UserError, match="different video settings: seconds, seed"):
        start_from(checkpoint, reseeded, plan.prompts, plan.num_chunks)


def test_a_transition_blends_the_two_prompts_chunk_by_chunk_and_is_recorded(tmp_path):
    prompts = plan_video(Config(prompts=["a red circle", "1.25+1.25:a green square"], seconds=4.0, fps=8.0),
                         FRAMES).prompts  # chunks of 5 frames: chunk m starts at 0.625 m s
    assert [prompts.of(m) for m in range(1, 5)] == [
        "a red circle", "a red circle", Blend("a red circle", "a green square", 0.5), "a green square"]
    assert prompts.label(3) == "a red circle -> a green square (0.500)"
    assert split_entry(timed_entry(1 / 3, "a green square", 0.1)) == (1 / 3, "a green square", 0.1)
    with pytest.raises(UserError, match="no transition"):
        PromptSchedule.parse(["0+2:a red circle"])
    job = live_job(tmp_path)
    first = job.steering.change_prompt("a blue circle", 0.75)  # before the first chunk: nothing to blend from
    later = []
    drive(job, {10: lambda: (later.append(job.steering.change_prompt("a green square", 0.75)), job.steering.stop())})
    assert job.run.load_config().prompts == ["0.0:a blue circle", "1.5+0.75:a green square"]
    assert (first.chunk, later[0].chunk) == (0, 4)


class Halves:
    """A backend whose conditioning is the prompt's length, blended linearly: to see which encodings are asked."""

    def __init__(self):
        self.encoded = []

    def encode_prompt(self, text: str) -> float:
        self.encoded.append(text)
        return float(len(text))

    def blend_conds(self, before: float, after: float, weight: float) -> float:
        return before + weight * (after - before)


def test_prompt_encodings_blend_the_encodings_of_both_prompts_once():
    backend = Halves()
    encodings = PromptEncodings(backend)
    assert encodings.get(Blend("ab", "abcdef", 0.25)) == 3.0 and encodings.get("ab") == 2.0
    assert encodings.get(Blend("ab", "abcdef", 0.25)) == 3.0 and backend.encoded == ["ab", "abcdef"]
