r"""Prompt files: one prompt a line (``.txt``), or a caption column of a CSV / JSON Lines file.

COCO-style caption files come as CSV (``image_id,caption``) or JSON Lines
(``{"image_id": 1, "caption": "..."}``); the column is ``caption`` by default, else the first of
``caption``, ``text``, ``prompt`` present, or the one named. Blank lines and blank captions are
skipped; a file that is empty, not UTF-8, or lacks the column is refused with one ``ValueError``.

A text-to-image model is conditioned on prompt *indices* (:mod:`s4s.text2image.pipelines`): prompt
``k`` is row ``k`` of a table of embeddings, and the negative prompt (the unconditional branch of
classifier-free guidance) is the last row, as the null class is for class-conditional models.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["read_prompts", "prompt_hashes", "split_prompts", "CAPTION_COLUMNS"]

CAPTION_COLUMNS = ("caption", "text", "prompt")


def _column(names: Sequence[str], column: Optional[str], path: Path) -> str:
    if column is not None:
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(map(str, names)) or 'none'})")
        return column
    for name in CAPTION_COLUMNS:
        if name in names:
            return name
    raise ValueError(f"{path}: no caption column (looked for {', '.join(CAPTION_COLUMNS)}; columns: "
                     f"{', '.join(map(str, names)) or 'none'}); name it with --caption-column")


def _from_csv(text: str, column: Optional[str], path: Path) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    name = _column(reader.fieldnames or [], column, path)
    return [str(row.get(name) or "") for row in reader]


def _from_jsonl(text: str, column: Optional[str], path: Path) -> list[str]:
    prompts, names = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object with a caption field, got {type(record).__name__}")
        names = names or _column(list(record), column, path)
        if names not in record:
            raise ValueError(f"{path}:{number}: no {names!r} field")
        prompts.append(str(record[names]))
    return prompts


def read_prompts(path: str | Path, column: Optional[str] = None) -> list[str]:
    """The prompts of ``path``: ``.csv`` and ``.jsonl`` / ``.json`` by their caption column (``column``, or
    the first of :data:`CAPTION_COLUMNS`), anything else one prompt a line. Surrounding whitespace is
    stripped and blank prompts are dropped; the order is kept (duplicates too: they are separate samples)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the prompt file {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save the prompt file as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        prompts = _from_csv(text, column, path)
    elif suffix in (".jsonl", ".json"):
        prompts = _from_jsonl(text, column, path)
    else:
        if column is not None:
            raise ValueError(f"--caption-column is for .csv / .jsonl files; {path} is read one prompt a line")
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (the file is empty or every caption is blank)")
    return prompts


def prompt_hashes(prompts: Sequence[str]) -> list[str]:
    """Short SHA-256 of each prompt (recorded in a learned solver to check that evaluation prompts differ)."""
    return [hashlib.sha256(p.encode()).hexdigest()[:12] for p in prompts]


def split_prompts(num_prompts: int, val_fraction: float) -> int:
    """How many of ``num_prompts`` prompts are for learning; the rest (at least one) are for validation,
    so that validation measures prompts the solver did not learn on. Needs at least two prompts."""
    if num_prompts < 2:
        raise ValueError(f"learning needs at least 2 prompts (learning and validation prompts are disjoint), "
                         f"got {num_prompts}")
    n_val = min(num_prompts - 1, max(1, int(round(num_prompts * val_fraction))))
    return num_prompts - n_val
