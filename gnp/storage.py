"""Where results, checkpoints and shards live: a local path or any pyarrow filesystem URI (s3://, gs://,
file://), named the same way by the grid, its writer, the analysis and the ImageNet stager."""

from pathlib import Path

from pyarrow import fs


def is_uri(location) -> bool:
    return "://" in str(location)


def absolute(location) -> str:
    """A URI as it is; a local path absolute, ~ expanded (a Ray worker's working folder is not the user's)."""
    return str(location) if is_uri(location) else str(Path(location).expanduser().resolve())


def resolve(location) -> tuple[fs.FileSystem, str]:
    """The filesystem and the path within it; an unknown scheme or missing credentials raise pyarrow's error."""
    if not is_uri(location):
        return fs.LocalFileSystem(), absolute(location)
    return fs.FileSystem.from_uri(str(location))
