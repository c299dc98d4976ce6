"""`pavdm batch`: every row of a prompt list through one pipeline; one MP4 per row and a manifest.parquet."""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from tqdm import tqdm

from orchestrator.core.config import Config, identity_hash, validate
from orchestrator.core.errors import RunFailed, UserError, ending, one_line
from orchestrator.core.prompts import PromptSchedule
from orchestrator.core.rules import check_run_id, seed_value
from orchestrator.engine.jobs import JobQueue, StreamJob
from orchestrator.engine.metrics import PipelineMetrics
from orchestrator.engine.runner import run_jobs
from orchestrator.state.atomic import partial_path
from orchestrator.state.outputs import same_file
from orchestrator.state.runs import RunFolder

MANIFEST = "manifest.parquet"
MANIFEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("prompt", pa.string()), ("prompts", pa.list_(pa.string())), ("seed", pa.int64()),
    ("frames", pa.int64()), ("seconds", pa.float64()), ("path", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("started_at", pa.float64()), ("finished_at", pa.float64()),
    ("elapsed_seconds", pa.float64()), ("settings", pa.string()),
])


@dataclasses.dataclass
class ManifestRow:
    """One row of manifest.parquet: what was asked, where the video is, and how it went."""

    id: str
    prompt: str = ""
    prompts: list[str] | None = None
    seed: int | None = None
    frames: int | None = None
    seconds: float | None = None
    path: str = ""
    status: str = "pending"  # completed | failed | interrupted
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    elapsed_seconds: float | None = None
    settings: str = ""  # identity_hash of the row's video settings


def open_location(uri_or_path: str) -> tuple[fs.FileSystem, str]:
    """A pyarrow filesystem and the path in it, for a local path or a URI (s3://, gs://, hdfs://, file://)."""
    try:
        if "://" in uri_or_path:
            return fs.FileSystem.from_uri(uri_or_path)
        return fs.LocalFileSystem(), str(Path(uri_or_path).resolve())
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"cannot open '{uri_or_path}': {err}") from None


def read_prompt_rows(source: str) -> list[dict]:
    """The rows of a JSONL, CSV or Parquet prompt list (by extension), as dicts. A JSONL line that is not a
    JSON object becomes a row holding only its parse error, so that it fails alone."""
    filesystem, path = open_location(source)
    suffix = Path(path).suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq"):
        raise UserError(f"prompt list '{source}' must end in .jsonl, .csv or .parquet")
    try:
        with filesystem.open_input_stream(path) as stream:
            blob = stream.read()
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"cannot read prompt list '{source}': {err}") from None
    if suffix in (".parquet", ".pq"):
        try:
            return pq.read_table(pa.BufferReader(blob)).to_pylist()
        except pa.ArrowException as err:
            raise UserError(f"'{source}' is not a readable Parquet file: {err}") from None
    text = blob.decode("utf-8", errors="replace")
    if suffix == ".csv":
        return [{k: v for k, v in row.items() if k is not None and v not in (None, "")}
                for row in csv.DictReader(io.StringIO(text))]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            row = {"_error": f"line {number} is not valid JSON: {err.msg}"}
        rows.append(row if isinstance(row, dict) else {"_error": f"line {number} is not a JSON object"})
    return rows


def row_config(base: Config, row: dict, index: int) -> tuple[str, Config]:
    """The id and config of one row; UserError names what is wrong with it."""
    row_id = check_run_id(str(row.get("id") or f"row-{index:05d}"), "id")
    if "_error" in row:
        raise UserError(row["_error"])
    unknown = set(row) - {"id", "prompt", "prompts", "seconds", "seed"}
    if unknown:
        raise UserError(f"unknown column(s): {', '.join(sorted(unknown))}")
    config = copy.deepcopy(base)
    schedule = row.get("prompts")
    if isinstance(schedule, str):  # CSV: "0:a red circle|20:a green square"
        schedule = [entry for entry in schedule.split("|") if entry.strip()]
    if schedule:
        config.prompts = [str(entry) for entry in schedule]
    elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
        config.prompts = [f"0:{row['prompt']}"]  # the whole text, even one that starts like "16:9 ..."
    else:
        raise UserError("a row needs a non-empty 'prompt' (or a 'prompts' schedule)")
    if row.get("seconds") is not None:
        try:
            config.seconds = float(row["seconds"])
        except (TypeError, ValueError):
            raise UserError(f"seconds must be a number, got {row['seconds']!r}") from None
    if row.get("seed") is not None:
        config.seed = seed_value(row["seed"])
    PromptSchedule.parse(config.prompts)
    validate(config)
    return row_id, config


class Batch:
    """A batch writing into `out` (local folder or URI); its runs live under `root` on this machine."""

    def __init__(self, base: Config, out: str, root: str):
        self.base, self.out = base, out.rstrip("/")
        self.filesystem, self.out_path = open_location(self.out)
        try:
            self.filesystem.create_dir(self.out_path, recursive=True)
        except OSError as err:
            raise UserError(f"cannot write to --out '{out}': {err}") from None
        self.root = Path(root) / ("batch-" + hashlib.sha256(self.out.encode()).hexdigest()[:10])
        self.manifest: dict[str, ManifestRow] = self.read_manifest()

    def read_manifest(self) -> dict[str, ManifestRow]:
        try:
            with self.filesystem.open_input_file(f"{self.out_path}/{MANIFEST}") as stream:
                rows = pq.read_table(stream).to_pylist()
        except (FileNotFoundError, OSError, pa.ArrowException):
            return {}
        known = {field.name for field in dataclasses.fields(ManifestRow)}  # another version's extra columns: dropped
        return {row["id"]: ManifestRow(**{k: v for k, v in row.items() if k in known}) for row in rows}

    def write_manifest(self) -> None:
        """Written whole after every finished row (one object on object stores, a rename on local disks)."""
        rows = [dataclasses.asdict(row) for row in self.manifest.values()]
        table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
        final = f"{self.out_path}/{MANIFEST}"
        local = isinstance(self.filesystem, fs.LocalFileSystem)
        target = str(partial_path(Path(final))) if local else final
        with self.filesystem.open_output_stream(target) as stream:
            pq.write_table(table, stream)
        if local:
            self.filesystem.move(target, final)

    def done(self, row_id: str, settings: str) -> bool:
        """The row's video is finished with these settings, and its MP4 is there."""
        row = self.manifest.get(row_id)
        if row is None or row.status != "completed" or row.settings != settings:
            return False
        filesystem, path = open_location(row.path)
        return filesystem.get_file_info(path).type == fs.FileType.File

    def job(self, row_id: str, config: Config) -> StreamJob:
        """The row's run: continued if an earlier attempt left one (its checkpoints), else created."""
        config.run.root, config.run.id = str(self.root), row_id
        config.output.out = ""
        folder = self.root / row_id
        if (folder / "config.yaml").is_file():
            run = RunFolder(folder)
            saved = run.load_config()
            if identity_hash(saved) == identity_hash(config):  # the same video: continue from its checkpoints
                return StreamJob(saved, run)
            shutil.rmtree(folder)  # the row changed since: start it again
        return StreamJob(config, RunFolder.create(config))

    def deliver(self, job: StreamJob) -> str:
        """Copy the row's finished MP4 into `out`; returns its path there."""
        target = f"{self.out_path}/{job.id}.mp4"
        fs.copy_files(str(job.out), target, destination_filesystem=self.filesystem)
        return target if "://" not in self.out else f"{self.out.split('://')[0]}://{target}"


def run_batch(base: Config, source: str, out: str, root: str = "runs", progress: bool = True) -> list[ManifestRow]:
    """Run every row not already finished; returns the manifest rows of this batch. Raises RunFailed if a row
    failed (after every other row has run)."""
    if "://" not in source + out and same_file(Path(source), Path(out) / MANIFEST):
        raise UserError(f"the prompt list '{source}' is the manifest this batch writes; copy it elsewhere first")
    batch = Batch(base, out, root)
    rows = read_prompt_rows(source)
    if not rows:
        raise UserError(f"prompt list '{source}' has no rows")
    jobs, seen, order = [], set(), []
    for index, row in enumerate(rows):
        try:
            row_id, config = row_config(base, row, index)
            if row_id in seen:
                raise UserError(f"duplicate id '{row_id}'")
        except UserError as err:
            row_id = str(row.get("id") or f"row-{index:05d}")[:100]
            if row_id in seen:
                row_id = f"row-{index:05d}"
            batch.manifest[row_id] = ManifestRow(row_id, str(row.get("prompt") or "")[:2000], status="failed",
                                                 error=one_line(err))
        else:
            settings = identity_hash(config)
            if not batch.done(row_id, settings):
                batch.manifest[row_id] = ManifestRow(row_id, str(row.get("prompt") or ""), list(config.prompts),
                                                     config.seed, seconds=config.seconds, settings=settings)
                jobs.append(batch.job(row_id, config))
        seen.add(row_id)
        order.append(row_id)
    batch.write_manifest()
    if jobs:
        run_rows(batch, base, jobs, progress)
    batch.manifest = {row_id: batch.manifest[row_id] for row_id in order}
    batch.write_manifest()
    failed = [row for row in batch.manifest.values() if row.status != "completed"]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(order)} rows failed (first: {failed[0].id}: {failed[0].error}); "
                        f"see {batch.out}/{MANIFEST}")
    return list(batch.manifest.values())


def run_rows(batch: Batch, base: Config, jobs: list[StreamJob], progress: bool) -> None:
    """All jobs through one pipeline with one progress bar over their frames."""
    bar = tqdm(total=0, unit="frame", desc=f"batch of {len(jobs)}", disable=not progress, dynamic_ncols=True)
    written: dict[str, int] = {}
    started: dict[str, float] = {}

    def on_frames(job: StreamJob, frames: int) -> None:
        if job.id not in started:
            started[job.id] = time.time()
            bar.total += job.frames_total
        bar.update(frames - written.get(job.id, 0))
        written[job.id] = frames

    def on_end(job: StreamJob) -> None:
        now = time.time()
        begun = started.get(job.id, now)
        row = dataclasses.replace(batch.manifest[job.id], frames=job.frames_total or None, started_at=begun,
                                  finished_at=now, elapsed_seconds=now - begun)
        if job.out is not None:
            try:
                row.path, row.status = batch.deliver(job), "completed"
            except OSError as err:
                row.status, row.error = "failed", f"cannot copy the video to --out: {err}"
        else:
            row.status, row.error = ending(job.error)
        batch.manifest[job.id] = row
        batch.write_manifest()

    for job in jobs:
        job.on_frames = lambda frames, job=job: on_frames(job, frames)
        job.on_end = on_end
    try:
        run_jobs(base, JobQueue(jobs, closed=True), PipelineMetrics("batch", max(base.pipeline.stages, 1)), bar)
    finally:
        bar.close()
