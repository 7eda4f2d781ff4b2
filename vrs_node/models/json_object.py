"""Reading a checkpoint's JSON files (``config.json``, the tokenizer's) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: Path, error: type[ValueError]) -> dict:
    """The JSON object in ``path``; ``error`` naming the file when the text is not UTF-8 JSON (or
    nests too deep to parse) or holds something other than an object. A missing file raises
    FileNotFoundError, as reading it does."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data
