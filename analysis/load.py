"""Read a results folder's per-trial Parquet files into one DataFrame with the explicit result schema.

A file that is not a result file (corrupt, another schema, unknown status) is never merged: it stops the
load with its name, or is left out with a warning when the caller asks to skip bad files. Paths whose
folder or file name starts with "_" or "." are not trial files (the grid's `_ray/` storage and
`_grid.json`, temporary files) and are not read. A file written before an optional column existed
(gnp.rows.OPTIONAL) loads with nulls in it; any other difference from the schema is a bad file.
"""

import json
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from analysis.errors import AnalysisError
from gnp import storage
from gnp.rows import OPTIONAL, RESULT_SCHEMA, STATUSES

ON_BAD = ("error", "skip")
_FIX = "delete or rewrite it (or rerun its trial), or leave it out with --skip-bad / on_bad='skip'"


class _BadFile(Exception):
    """Why one file is not a result file; load_results adds the file's name and the fix."""


def load_results(path, on_bad: str = "error") -> pd.DataFrame:
    """Every trial row under `path` (a folder, one .parquet file, or a pyarrow URI such as s3://bucket/dir).

    on_bad="error" raises AnalysisError at the first bad file; on_bad="skip" warns and leaves it out.
    """
    if on_bad not in ON_BAD:
        raise AnalysisError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    filesystem, root = _resolve(str(path))
    files = _trial_files(filesystem, root, str(path))
    tables, owner = [], {}
    for file in files:
        try:
            table = _read_trial(filesystem, file)
        except _BadFile as why:
            if on_bad == "error":
                raise AnalysisError(f"bad result file {file}: {why}; {_FIX}") from None
            warnings.warn(f"skipped bad result file {file}: {why}", stacklevel=2)
            continue
        for key in sorted(set(table["trial_key"].to_pylist())):
            if key in owner:
                raise AnalysisError(
                    f"trial {key} is in both {owner[key]} and {file} (the same config and seed twice); "
                    "point at one experiment's folder, results/<experiment>"
                )
            owner[key] = file
        tables.append(table)
    if not tables:
        raise AnalysisError(
            f"all {len(files)} trial files under {path} were bad and skipped; nothing to analyse"
        )
    return with_options(pa.concat_tables(tables).to_pandas())


def with_options(df: pd.DataFrame) -> pd.DataFrame:
    """A column for each configuration field (the `config` JSON) whose value varies among the rows and has
    no column of its own, named as the field (mix, clip_grad_norm, ...); dict values as JSON text. Rows of
    files written before `config` existed hold nulls there."""
    parsed = {text: json.loads(text) for text in df["config"].dropna().unique()}
    fields = dict.fromkeys(name for config in parsed.values() for name in config)
    for name in fields:
        values = {text: _cell_value(config.get(name)) for text, config in parsed.items()}
        if name not in df.columns and len(set(map(repr, values.values()))) > 1:
            df[name] = df["config"].map(values)
    return df


def _cell_value(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


def _resolve(text: str) -> tuple[pafs.FileSystem, str]:
    try:
        return storage.resolve(text)
    except (pa.ArrowException, OSError) as err:
        raise AnalysisError(
            f"cannot open {text} ({err}); give a local folder or a URI like s3://bucket/dir"
        ) from None


def _trial_files(filesystem: pafs.FileSystem, root: str, shown: str) -> list[str]:
    """The *.parquet files under root, recursively, leaving out "_" and "." paths."""
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise AnalysisError(
                f"results folder {shown} does not exist; pass the folder the grid wrote, e.g. results/<experiment>"
            )
        if info.type == pafs.FileType.File:
            return [root]
        found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as err:
        raise AnalysisError(f"cannot list {shown} ({err}); check the path and its credentials") from None
    files = sorted(
        i.path
        for i in found
        if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not _hidden(i.path[len(root) :])
    )
    if not files:
        raise AnalysisError(
            f"no trial files (*.parquet) under {shown}; run the grid first (make imagenet) or pass its "
            "results folder, e.g. results/<experiment>"
        )
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/") if part)


def read_trial(filesystem: pafs.FileSystem, path: str) -> pa.Table | None:
    """One trial file's rows in RESULT_SCHEMA, or None for a file that is not one (other readers, such as the
    dry run's price list, skip what load_results would name)."""
    try:
        return _read_trial(filesystem, path)
    except _BadFile:
        return None


def _read_trial(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    """The file's rows in RESULT_SCHEMA, or _BadFile saying what is wrong with it."""
    try:
        with filesystem.open_input_file(path) as source:
            table = pq.read_table(source)
    except (pa.ArrowException, OSError) as err:
        raise _BadFile(f"not a readable Parquet file ({err})") from None
    problem = _schema_problem(table.schema)
    if problem:
        raise _BadFile(f"its columns differ from gnp.rows.RESULT_SCHEMA ({problem})")
    if table.num_rows == 0:
        raise _BadFile("it holds no rows")
    nulls = [f.name for f in RESULT_SCHEMA if not f.nullable and table[f.name].null_count]
    if nulls:
        raise _BadFile(f"required column(s) {', '.join(nulls)} hold nulls")
    for name in OPTIONAL:
        if name not in table.column_names:
            column = RESULT_SCHEMA.field(name)
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    table = table.select(RESULT_SCHEMA.names).cast(RESULT_SCHEMA)
    unknown = pc.filter(table["status"], pc.invert(pc.is_in(table["status"], pa.array(STATUSES))))
    if len(unknown):
        raise _BadFile(f"status {unknown[0].as_py()!r} is none of {', '.join(STATUSES)}")
    return table


def _schema_problem(schema: pa.Schema) -> str:
    """'' when the columns match RESULT_SCHEMA by name and type (string and large_string alike)."""

    def kind(t: pa.DataType) -> pa.DataType:
        return pa.string() if pa.types.is_large_string(t) else t

    have = {f.name: kind(f.type) for f in schema}
    want = {f.name: f.type for f in RESULT_SCHEMA}
    missing = [n for n in want if n not in have and n not in OPTIONAL]
    extra = [n for n in have if n not in want]
    wrong = [f"{n} is {have[n]}, not {t}" for n, t in want.items() if n in have and have[n] != t]
    return "; ".join(
        text
        for text in (
            missing and "missing " + ", ".join(missing),
            extra and "unexpected " + ", ".join(extra),
            ", ".join(wrong),
        )
        if text
    )
