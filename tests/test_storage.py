"""gnp.storage: the one reading of a location that the grid, its writer, the analysis and the stager share."""

from pathlib import Path

from pyarrow import fs

from gnp import storage


def test_a_local_path_is_made_absolute_and_a_uri_keeps_its_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    filesystem, path = storage.resolve("results/exp")
    assert isinstance(filesystem, fs.LocalFileSystem) and path == str(tmp_path / "results" / "exp")
    assert storage.absolute("~/r") == str(tmp_path / "home" / "r") and storage.absolute(Path("r")) == str(tmp_path / "r")
    filesystem, path = storage.resolve(f"file://{tmp_path}/x")
    assert isinstance(filesystem, fs.LocalFileSystem) and path == f"{tmp_path}/x"
    assert storage.absolute("s3://bucket/dir") == "s3://bucket/dir" and storage.is_uri("gs://b/x")
    assert not storage.is_uri(tmp_path)
