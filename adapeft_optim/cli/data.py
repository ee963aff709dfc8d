"""The data of ``adapeft select``: texts and labels of a JSONL or CSV file, with one-line
errors that name the file, the line and the fix; labels as class ids."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from .common import CLIError

__all__ = ["label_ids", "load_examples"]


def load_examples(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = None,
) -> tuple[list[str], list[Any] | None]:
    """Texts (and labels) of a JSONL or CSV file.

    With ``label_column=None`` the file is a classification set when its first example has a
    ``label`` field/column; with a name the column is required.

    Returns:
        ``(texts, labels)``; ``labels`` is ``None`` for a language-modelling file.

    Raises:
        CLIError: the file is missing, unreadable, not JSONL/CSV, malformed (with the line
            number), lacks the text or label column, or holds no example.
    """
    path = Path(path)
    rows = _read_rows(path, text_column, label_column)
    label_key = label_column
    if label_key is None and "label" in rows[0][1]:
        label_key = "label"
    texts, labels = [], []
    for line, row in rows:
        where = f"{path}:{line}"
        texts.append(_text_of(where, row, text_column))
        if label_key is None:
            if "label" in row and label_column is None:
                raise CLIError(
                    f"{where}: has a 'label' but the first example has none; label every example "
                    f"(classification) or none (language modelling)"
                )
            continue
        labels.append(_label_of(where, row, label_key, label_column))
    return texts, (labels if label_key is not None else None)


def _read_rows(path: Path, text_column: str, label_column: str | None) -> list[tuple[int, dict]]:
    """The rows of a JSONL or CSV file (at least one), each with its line number."""
    if not path.exists():
        raise CLIError(f"data file {path} does not exist")
    if path.is_dir():
        raise CLIError(f"data file {path} is a folder; pass a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        rows = _read_csv(path, text_column, label_column, "\t" if suffix == ".tsv" else ",")
    else:
        raise CLIError(
            f"data file {path} has an unknown format {suffix or '(no suffix)'}; use .jsonl "
            f"(one JSON object per line) or .csv (a header row with a '{text_column}' column)"
        )
    if not rows:
        raise CLIError(f"data file {path} holds no examples; add rows with a '{text_column}' field")
    return rows


def _text_of(where: str, row: dict, text_column: str) -> str:
    if text_column not in row:
        fields = ", ".join(repr(k) for k in row) or "none"
        raise CLIError(f"{where}: no '{text_column}' field (fields: {fields}); name the text field with --text-column")
    text = row[text_column]
    if not isinstance(text, str):
        raise CLIError(f"{where}: '{text_column}' must be a string, got {type(text).__name__} {text!r}")
    return text


def _label_of(where: str, row: dict, label_key: str, label_column: str | None) -> Any:
    if label_key not in row and label_column is not None:
        fields = ", ".join(repr(k) for k in row) or "none"
        raise CLIError(
            f"{where}: no '{label_key}' field (fields: {fields}); name the label field "
            "with --label-column, or leave it out for language modelling"
        )
    value = row.get(label_key)
    if value is None or value == "":
        raise CLIError(f"{where}: no '{label_key}' value; every example of a classification file needs a label")
    if isinstance(value, (dict, list, float)) and not (isinstance(value, float) and value.is_integer()):
        raise CLIError(f"{where}: label {value!r} is not a class name or integer id")
    return value


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CLIError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(obj, dict):
                    raise CLIError(
                        f'{path}:{lineno}: expected a JSON object such as {{"text": "..."}}, got {type(obj).__name__}'
                    )
                rows.append((lineno, obj))
    except UnicodeDecodeError as err:
        raise CLIError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CLIError(f"cannot read data file {path}: {err.strerror or err}") from None
    return rows


def _read_csv(path: Path, text_column: str, label_column: str | None, delimiter: str) -> list[tuple[int, dict]]:
    """Rows of a CSV file with the line each *starts* on (a quoted field may span lines)."""
    rows: list[tuple[int, dict]] = []
    header: list[str] | None = None
    start = 1  # the line the record being read starts on
    try:
        with open(path, encoding="utf-8", newline="") as f:
            # strict: an unterminated quote is an error, not a field swallowing the file's rest
            reader = csv.reader(f, delimiter=delimiter, strict=True)
            try:
                for fields in reader:
                    line, start = start, reader.line_num + 1
                    if not fields:  # a blank line
                        continue
                    if header is None:
                        header = fields
                        _check_csv_header(path, header, text_column, label_column)
                        continue
                    rows.append((line, _csv_row(path, line, header, fields, text_column, delimiter)))
            except csv.Error as err:
                if "unexpected end of data" in str(err):
                    raise CLIError(
                        f"{path}:{start}: a quoted field opened on this line is never closed "
                        f"(the file ends at line {reader.line_num}); add the closing quote, "
                        f'and write a quote inside a quoted field as ""'
                    ) from None
                raise CLIError(
                    f'{path}:{start}: malformed CSV ({err}); write a quote inside a quoted field as ""'
                ) from None
    except UnicodeDecodeError as err:
        raise CLIError(f"data file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CLIError(f"cannot read data file {path}: {err.strerror or err}") from None
    return rows


def _csv_row(path: Path, line: int, header: list[str], fields: list[str], text_column: str, delimiter: str) -> dict:
    """One record as ``{column: value}`` (``None`` for the missing trailing fields)."""
    if len(fields) > len(header):
        raise CLIError(
            f"{path}:{line}: {len(fields)} fields, more than the header's "
            f"{len(header)} ({', '.join(header)}); quote fields that hold a "
            f"'{delimiter}'"
        )
    row = {h: fields[i] if i < len(fields) else None for i, h in enumerate(header)}
    if row[text_column] is None:
        raise CLIError(
            f"{path}:{line}: {len(fields)} fields, fewer than the header's {len(header)}; no '{text_column}' value"
        )
    return row


def _check_csv_header(path: Path, header: list[str], text_column: str, label_column: str | None) -> None:
    columns = ", ".join(header)
    if text_column not in header:
        raise CLIError(
            f"{path}: no '{text_column}' column (columns: {columns}); name the text column with --text-column"
        )
    if label_column is not None and label_column not in header:
        raise CLIError(
            f"{path}: no '{label_column}' column (columns: {columns}); name the label column "
            "with --label-column, or leave it out for language modelling"
        )


def label_ids(labels: list[Any]) -> tuple[list[int], list[str]]:
    """Class ids (sorted class names: numerically when every label is an integer)."""

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        return None

    ints = [as_int(v) for v in labels]
    if all(i is not None for i in ints):
        keys: list[Any] = ints
        classes = sorted(set(ints))
    else:
        keys = [str(v) for v in labels]
        classes = sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    return [index[k] for k in keys], [str(c) for c in classes]
