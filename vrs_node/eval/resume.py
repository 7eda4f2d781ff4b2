"""Completion records of ``vrs-replay``: what lets ``--resume`` skip the sequences a crashed or
stopped run already finished.

Contract:

- a record, :data:`RECORD_NAME` in the sequence's folder (``<out>/<sequence>/``), is written by
  :func:`write_record` only after the sequence's files are complete (atomically: a crash leaves the
  old record or none); it holds the run's :func:`record_key` for that sequence, the sequence's
  summary, its ``frames.csv`` rows at full precision and the model fields of the summary;
- :func:`resume_plan` reads the records of a run's sequences: a record whose key equals the
  sequence's key is *done* (its summary and rows stand for the sequence: the same figures as
  running it again in ``stream`` mode); a record that differs, or cannot be read, is re-run with a
  note naming what differs; no record: the sequence runs;
- the key: model profile, mode, prompt, instruction, checkpoint fingerprint
  (:func:`checkpoint_fingerprint`), the sequence's frame count and every model, engine and output
  setting (a resumed table never mixes settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from vrs_node.eval.sequences import ReplaySequence

RECORD_NAME = "completion.json"
"""The completion record's file name in a sequence folder."""
RECORD_VERSION = 1


def checkpoint_fingerprint(paths: Iterable[str]) -> str | None:
    """sha256 over the name, size and modification time (ns) of every file of the given checkpoint
    files or directories that exist (a tag such as ``openai`` is hashed as its text); None when no
    path is given. Cheap on a 15 GB checkpoint: a replaced or rewritten file changes it."""
    digest, any_given = hashlib.sha256(), False
    for given in paths:
        if not given:
            continue
        any_given, path = True, Path(given)
        if not path.exists():
            digest.update(f"tag:{given}\n".encode())
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            stat = file.stat()
            digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest() if any_given else None


def record_key(seq: ReplaySequence, run_key: dict) -> dict:
    """The key of ``seq``'s record: the run's key (profile, mode, prompt, checkpoint, settings) with
    the sequence's instruction and frame count."""
    return {**run_key, "instruction": seq.instruction, "frames": seq.count}


def write_record(seq_dir: Path, key: dict, summary: dict, rows: list[dict], meta: dict) -> Path:
    """Write ``seq_dir``/:data:`RECORD_NAME` atomically; returns its path."""
    path = seq_dir / RECORD_NAME
    record = {"version": RECORD_VERSION, "key": key, "meta": meta, "summary": summary, "rows": rows}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, default=_plain) + "\n")
    os.replace(temporary, path)
    return path


def _plain(value):
    """numpy scalars (``item()``) and tuples as JSON values."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _differences(old: dict, new: dict) -> list[str]:
    """The keys (``settings.x`` one level down) whose values differ, with both values."""
    found = []
    for name in dict.fromkeys([*old, *new]):
        before, after = old.get(name), new.get(name)
        if isinstance(before, dict) and isinstance(after, dict):
            found += [f"{name}.{d}" for d in _differences(before, after)]
        elif before != after:
            found.append(f"{name} {before!r} -> {after!r}")
    return found


def resume_plan(sequences: list[ReplaySequence], out: Path, keys: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    """(done: sequence name -> its record, notes) for a ``--resume`` run of ``sequences`` into
    ``out``; ``keys``: sequence name -> its :func:`record_key`. A sequence without a record is
    neither done nor noted."""
    done, notes = {}, []
    for seq in sequences:
        path = out / seq.name / RECORD_NAME
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            old_key = record["key"] if record.get("version") == RECORD_VERSION else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            notes.append(f"{seq.name}: unreadable completion record ({error}); re-run")
            continue
        # the key as JSON stores it (tuples as lists), so equal settings compare equal
        new_key = json.loads(json.dumps(keys[seq.name], default=_plain))
        if old_key == new_key:
            done[seq.name] = record
        else:
            what = "; ".join(_differences(old_key, new_key)) if isinstance(old_key, dict) else "record version"
            notes.append(f"{seq.name}: completion record does not match this run ({what}); re-run")
    return done, notes
