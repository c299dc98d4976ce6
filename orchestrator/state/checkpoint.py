"""Checkpoints through pyarrow.fs: Arrow IPC files with a checksum, written atomically, the last few kept."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from orchestrator.core.errors import UserError

FORMAT_VERSION = 1
PREFIX = "ckpt-"
SUFFIX = ".arrow"
log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [("name", pa.string()), ("dtype", pa.string()), ("shape", pa.list_(pa.int64())), ("data", pa.large_binary())]
)


@dataclass
class Checkpoint:
    """Everything needed to continue a video at a shift boundary.

    tensors: named tensors, e.g. 'chunk/12' for chunk 12 (clean context or noisy, its level follows from
    next_tick), 'history/12' for its solver history (multistep solvers) and 'decoder/3' for the sink's decoder
    cache; meta: JSON-able facts (next tick, frames written, seed, prompts, resolved config and its hash).
    """

    next_tick: int
    frames_written: int
    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class CorruptCheckpoint(Exception):
    """A checkpoint file that does not verify (bad checksum, truncated, unreadable)."""


def _digest(meta_json: bytes, table: pa.Table) -> str:
    h = hashlib.sha256(meta_json)
    for name, dtype, shape, data in zip(*(table.column(c).to_pylist() for c in SCHEMA.names), strict=True):
        h.update(f"{name}|{dtype}|{shape}|".encode())
        h.update(data)
    return h.hexdigest()


def encode(checkpoint: Checkpoint) -> bytes:
    """Serialise to Arrow IPC; the schema metadata holds the facts and a SHA-256 over facts and tensors."""
    rows = {"name": [], "dtype": [], "shape": [], "data": []}
    for name, tensor in checkpoint.tensors.items():
        array = tensor.detach().cpu().contiguous().numpy()
        rows["name"].append(name)
        rows["dtype"].append(str(array.dtype))
        rows["shape"].append(list(array.shape))
        rows["data"].append(array.tobytes())
    table = pa.table(rows, schema=SCHEMA)
    meta = {"format_version": FORMAT_VERSION, "next_tick": checkpoint.next_tick,
            "frames_written": checkpoint.frames_written, **checkpoint.meta}
    meta_json = json.dumps(meta, sort_keys=True).encode()
    table = table.replace_schema_metadata({"pavdm": meta_json, "sha256": _digest(meta_json, table)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode(blob: bytes) -> Checkpoint:
    """Parse and verify; raises CorruptCheckpoint on any damage."""
    try:
        table = pa.ipc.open_file(pa.BufferReader(blob)).read_all()
        metadata = table.schema.metadata or {}
        meta_json, digest = metadata[b"pavdm"], metadata[b"sha256"].decode()
        if _digest(meta_json, table) != digest:
            raise CorruptCheckpoint("checksum mismatch")
        meta = json.loads(meta_json)
    except CorruptCheckpoint:
        raise
    except Exception as err:  # truncated or mangled files fail in many ways inside Arrow
        raise CorruptCheckpoint(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptCheckpoint(f"format version {meta.get('format_version')} (expected {FORMAT_VERSION})")
    tensors = {}
    for name, dtype, shape, data in zip(*(table.column(c).to_pylist() for c in SCHEMA.names), strict=True):
        array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
        tensors[name] = torch.from_numpy(array)
    next_tick, frames = meta.pop("next_tick"), meta.pop("frames_written")
    meta.pop("format_version")
    return Checkpoint(next_tick, frames, meta, tensors)


class CheckpointStore:
    """A folder or object-store prefix of checkpoints, addressed by any pyarrow.fs URI or local path."""

    def __init__(self, uri: str, keep: int = 3):
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError):
            self.fs, self.root = pafs.LocalFileSystem(), uri
        self.uri, self.keep = uri, keep
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def _path(self, tick: int) -> str:
        return f"{self.root}/{PREFIX}{tick:012d}{SUFFIX}"

    def names(self) -> list[str]:
        """Checkpoint file paths, oldest first."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError:
            return []
        return sorted(i.path for i in infos if i.base_name.startswith(PREFIX) and i.base_name.endswith(SUFFIX))

    def write(self, checkpoint: Checkpoint) -> str:
        """Write atomically (temporary name, then rename, on a local disk; one object on object stores),
        then drop all but the newest `keep`. A failure leaves the earlier checkpoints untouched."""
        blob = encode(checkpoint)
        final = self._path(checkpoint.next_tick)
        try:
            self.fs.create_dir(self.root, recursive=True)
            target = f"{final}.partial" if self.local else final
            with self.fs.open_output_stream(target) as stream:
                stream.write(blob)
            if self.local:
                self.fs.move(target, final)
        except OSError as err:
            if self.local:
                self._remove(f"{final}.partial")
            raise UserError(f"cannot write checkpoint to {self.uri}: {err}") from None
        for old in self.names()[: -self.keep]:
            self._remove(old)
        return final

    def _remove(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:
            pass

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; damaged ones are skipped with a warning."""
        for path in reversed(self.names()):
            try:
                with self.fs.open_input_file(path) as f:
                    return decode(f.read())
            except (CorruptCheckpoint, OSError) as err:
                log.warning("skipping damaged checkpoint %s: %s", path, err)
        return None
