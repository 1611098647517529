"""ImageNet as ~1 GB tar shards: packed once, staged onto each GPU node's local disk in parallel.

    python cluster/imagenet_shards.py pack /data/imagenet /data/imagenet-shards          # once, anywhere
    aws s3 sync /data/imagenet-shards s3://BUCKET/imagenet-shards                        # once
    python cluster/imagenet_shards.py stage s3://BUCKET/imagenet-shards /mnt/imagenet    # every node

ImageNet is 1.33M JPEGs of ~110 KB: copied file by file (`aws s3 sync`), every file costs a request and its
latency. As ~150 tar files of 1 GB, a node streams a few large objects in parallel and unpacks them as they
arrive (bench/staging.py measures the unpacking). `stage` takes any pyarrow file-system URI (s3://, gs://,
file://, a local path), so the tests and the benchmark run the same code on local folders.

A staged shard leaves <dst>/.staged/<shard>.done, and <dst>/.staged/manifest holds the hash of the index.json
those markers belong to: staging the same manifest again (a restarted setup, a RayJob retry whose pod lands
on the node again: dst is a folder on the node's NVMe that outlives pods) copies nothing, while a new
manifest (shards repacked) drops the old markers and stages everything. `stage` fails unless every file of
the index is on disk at the end. On a node, `stage` first checks that the NVIDIA driver runs the image's
torch (cluster/gpu_driver.py): 150 GB staged onto a node that cannot train is half an hour lost.
Needs only the standard library and pyarrow (in the cluster image).
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from gnp import storage

INDEX = "index.json"
DONE = ".staged"
MANIFEST = "manifest"  # in DONE: the hash of the index.json that the .done markers belong to
SHARD_BYTES = 1 << 30  # 1 GiB: ~150 shards for ImageNet, enough streams to fill a node's network


# ---- pack (once) ---------------------------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    """Every file under root, sorted, so that the same tree always packs into the same shards."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        out += [Path(folder, n) for n in sorted(names)]
    return out


def pack(src, dst, shard_bytes: int = SHARD_BYTES) -> dict:
    """Pack every file under src (train/<wnid>/*, val/<wnid>/*) into dst/shard-NNNNN.tar + dst/index.json."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shards, tar, current = [], None, None
    for path in _files(src):
        size = path.stat().st_size
        if tar is None or (current["bytes"] and current["bytes"] + size > shard_bytes):
            if tar is not None:
                tar.close()
            current = {"name": f"shard-{len(shards):05d}.tar", "files": 0, "bytes": 0}
            shards.append(current)
            tar = tarfile.open(dst / current["name"], "w", format=tarfile.PAX_FORMAT)
        tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
        current["files"] += 1
        current["bytes"] += size
    if tar is not None:
        tar.close()
    index = {"shards": shards, "files": sum(s["files"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}
    (dst / INDEX).write_text(json.dumps(index, indent=1))
    return index


# ---- stage (every node) ----------------------------------------------------------------------------------


def read_index(uri: str) -> dict:
    filesystem, root = storage.resolve(uri)
    with filesystem.open_input_stream(f"{root.rstrip('/')}/{INDEX}", compression=None) as f:
        return json.loads(f.read())


def _extract_members(tar: tarfile.TarFile, dst: Path) -> tuple[int, int]:
    """Write each regular file; tarfile's data filter refuses absolute paths, `..` and links out of dst."""
    made, files, size = set(), 0, 0
    for member in tar:
        member = tarfile.data_filter(member, str(dst))
        if member.isdir():
            continue
        if not member.isfile():
            raise ValueError(f"{member.name}: only regular files are staged")
        target = dst / member.name
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        with open(target, "wb") as out:
            size += out.write(tar.extractfile(member).read())
        files += 1
    return files, size


def extract_shard(uri: str, name: str, dst) -> tuple[str, int, int]:
    """Stream one shard from uri and unpack it into dst as it arrives; returns (name, files, bytes)."""
    dst = Path(dst)
    filesystem, root = storage.resolve(uri)
    with filesystem.open_input_stream(f"{root.rstrip('/')}/{name}", compression=None,
                                      buffer_size=8 << 20) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            files, size = _extract_members(tar, dst)
    (dst / DONE / f"{name}.done").write_text(str(files))
    return name, files, size


def manifest_key(index: dict) -> str:
    """The hash of a manifest (index.json), the same whatever its formatting."""
    return hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]


def _claim(dst: Path, key: str, log) -> None:
    """Make dst's markers those of manifest `key`: another manifest's (or unkeyed ones) are dropped."""
    marker = dst / DONE / MANIFEST
    if marker.exists() and marker.read_text() == key:
        return
    stale = list((dst / DONE).glob("*.done"))
    if stale:
        log(f"{dst} holds shards of another manifest: staging manifest {key} from scratch")
    for path in stale:
        path.unlink()
    marker.write_text(key)


def _done(dst: Path) -> dict[str, int]:
    folder = dst / DONE
    if not folder.is_dir():
        return {}
    return {p.name.removesuffix(".done"): int(p.read_text() or 0) for p in folder.glob("*.done")}


def stage(uri: str, dst, processes: int = 8, log=print) -> dict:
    """Unpack every shard of uri into dst, `processes` at a time; skip those already staged."""
    dst = Path(dst)
    (dst / DONE).mkdir(parents=True, exist_ok=True)
    index = read_index(uri)
    key = manifest_key(index)
    _claim(dst, key, log)
    done = _done(dst)
    todo = [s for s in index["shards"] if s["name"] not in done]
    start = time.perf_counter()
    staged_bytes = 0
    if todo:
        # spawn, not fork: the AWS SDK inside pyarrow is not fork-safe once this process has used it
        with ProcessPoolExecutor(max_workers=max(1, min(processes, len(todo))),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(extract_shard, uri, s["name"], dst) for s in todo]
            for i, future in enumerate(futures, 1):
                name, files, size = future.result()
                staged_bytes += size
                log(f"staged {name} ({files} files), {i}/{len(todo)}")
    seconds = time.perf_counter() - start
    done = _done(dst)
    staged_files = sum(done.get(s["name"], -1) for s in index["shards"])
    if staged_files != index["files"]:
        raise RuntimeError(f"staged {staged_files} files into {dst} but the index of {uri} lists {index['files']}")
    return {"shards": len(todo), "skipped": len(index["shards"]) - len(todo), "files": index["files"],
            "bytes": staged_bytes, "seconds": seconds, "manifest": key}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/imagenet_shards.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    packer = sub.add_parser("pack", help="pack an ImageFolder tree into tar shards + index.json")
    packer.add_argument("src")
    packer.add_argument("dst")
    packer.add_argument("--shard-mb", type=int, default=SHARD_BYTES >> 20)
    stager = sub.add_parser("stage", help="unpack the shards at URI into a local folder, in parallel")
    stager.add_argument("uri", help="s3://bucket/imagenet-shards, or a local folder")
    stager.add_argument("dst")
    stager.add_argument("--processes", type=int, default=min(16, os.cpu_count() or 1))
    stager.add_argument("--no-driver-check", action="store_true",
                        help="stage onto a machine that will not train (no NVIDIA driver check)")
    args = p.parse_args(argv)
    if args.command == "pack":
        index = pack(args.src, args.dst, args.shard_mb << 20)
        print(f"packed {index['files']} files ({index['bytes'] / 1e9:.1f} GB) into {len(index['shards'])} "
              f"shards in {args.dst}")
        return 0
    if not args.no_driver_check:
        import gpu_driver  # a sibling file: cluster/ is on sys.path when this runs as a script

        problem = gpu_driver.check()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    stats = stage(args.uri, args.dst, args.processes)
    rate = stats["bytes"] / max(stats["seconds"], 1e-9) / 1e6
    print(f"staged {stats['files']} files into {args.dst}: {stats['shards']} shards in {stats['seconds']:.0f} s "
          f"({rate:.0f} MB/s), {stats['skipped']} already there (manifest {stats['manifest']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
