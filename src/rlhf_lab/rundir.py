"""Run-directory integrity: one writer per run directory, manifests of checkpoints and models, ``rlhf-lab verify``.

One writer. Every command that writes a run directory first calls ``claim_run_dir(DIR)``: an exclusive
``fcntl.flock`` on ``DIR/.lock``, which records the holder's pid and host. A second process that claims the same
directory gets one line naming the holder (exit 2). The OS drops the lock when its process dies, so a run killed
with SIGKILL never blocks ``--resume``; the stale ``.lock`` file left behind is simply locked again. Claims are
re-entrant within one process (an orchestrator such as the demo writes many runs, and its children claim their own
subdirectories: a lock on a parent never covers a child). Under ``accelerate launch`` only the main process locks.

Manifests. ``write_manifest(DIR)`` records the size and sha256 of every file of a finished directory (a checkpoint
before it is renamed into place, an exported model before it is published) in ``DIR/manifest.json``, written last
and atomically. ``check_dir(DIR)`` compares the files with it without loading a model; a directory written before
manifests existed is checked structurally instead (safetensors headers against the file sizes, the CRC of every
member of a ``torch.save`` zip, JSON files parse), which catches truncation but not every flipped byte.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg
from rlhf_lab.errors import UserError
from rlhf_lab.io import atomic_write_text

LOCK_NAME = ".lock"
MANIFEST_NAME = "manifest.json"

# lock file (resolved) -> [open file descriptor holding the flock, number of claims not yet released]
_held: dict[Path, list[int]] = {}


# ---------------------------------------------------------------------------------------------------------
# One writer per run directory
# ---------------------------------------------------------------------------------------------------------


def _is_main_process() -> bool:
    """False on the non-main ranks of a launcher (accelerate / torchrun set RANK); they never take the lock."""
    return os.environ.get("RANK", "0") in ("", "0")


def claim_run_dir(path: str | Path, *, lock_file: str | Path | None = None) -> Path:
    """Create the run directory ``path`` and lock it for this process: ``flock(LOCK_EX | LOCK_NB)`` on
    ``path/.lock`` (or on ``lock_file``, for outputs that are published by renaming a whole directory).

    Raises ``UserError`` naming the holder (pid, host) when another process holds the lock. Re-entrant: a second
    claim of the same directory in this process only counts; the lock lasts until every claim is released
    (``release_run_dir``) or the process ends.
    """
    path = Path(path)
    lock = Path(lock_file) if lock_file is not None else path / LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    if lock_file is None:
        path.mkdir(parents=True, exist_ok=True)
    if not _is_main_process():
        return path
    key = lock.resolve()
    if key in _held:
        _held[key][1] += 1
        return path
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
    except OSError as e:
        raise UserError(f"{lock}: cannot create the lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise UserError(
            f"{path}: another run is writing here ({holder}); wait for it to finish or choose another --output_dir"
        ) from None
    except OSError as e:
        os.close(fd)
        raise UserError(f"{lock}: cannot lock the run directory ({e.strerror})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n")
        os.fsync(fd)
    except OSError as e:  # a full disk: the CLI names the file in one line
        os.close(fd)
        raise OSError(e.errno, e.strerror, str(lock)) from e
    _held[key] = [fd, 1]
    return path


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def release_run_dir(path: str | Path, *, lock_file: str | Path | None = None) -> None:
    """Release one claim of ``path`` (a no-op if it holds none); the last one drops the lock. The ``.lock`` file
    stays."""
    lock = Path(lock_file) if lock_file is not None else Path(path) / LOCK_NAME
    held = _held.get(lock.resolve())
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _held[lock.resolve()]
        os.close(held[0])  # closing the last descriptor of the open file releases the flock


def release_all() -> None:
    """Drop every lock this process holds (what process exit does; for in-process callers such as tests)."""
    for fd, _ in _held.values():
        os.close(fd)
    _held.clear()


# ---------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _listed_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(directory: str | Path) -> Path:
    """Write ``directory/manifest.json``: ``{"format": 1, "files": {relative path: {"size", "sha256"}}}``.

    Call it last, once every file is written and flushed: the hashes are read back from disk.
    """
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _listed_files(directory)}
    out = directory / MANIFEST_NAME
    atomic_write_text(out, json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    return out


@dataclass
class DirCheck:
    """The verdict on one checkpoint or model directory: ``problem`` is None when it is intact."""

    path: Path
    kind: str  # "checkpoint" | "model"
    problem: str | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.problem is None


CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "state.json")


def check_dir(directory: str | Path, kind: str = "checkpoint") -> DirCheck:
    """Check a checkpoint or an exported model directory without loading it.

    With a manifest: every listed file exists with the recorded size and sha256 (an entry without a sha256 is
    checked by size only). Without one (written by an older version): the structure check of ``_check_structure``.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        problem = _check_structure(directory, kind)
        return DirCheck(directory, kind, problem, "no manifest (older run): structure and sizes checked, no sha256")
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        items = [(str(name), int(e["size"]), e.get("sha256")) for name, e in entries.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return DirCheck(directory, kind, f"{manifest}: unreadable manifest", "")
    hashed = 0
    for name, size, sha in items:
        path = directory / name
        if not path.is_file():
            return DirCheck(directory, kind, f"{path}: missing (listed in {MANIFEST_NAME})", "")
        actual = path.stat().st_size
        if actual != size:
            return DirCheck(directory, kind, f"{path}: {actual} bytes, the manifest says {size}", "")
        if sha is not None:
            if sha256_file(path) != sha:
                return DirCheck(directory, kind, f"{path}: sha256 differs from the manifest", "")
            hashed += 1
    return DirCheck(directory, kind, None, f"{len(items)} files match the manifest ({hashed} by sha256, "
                                          f"{len(items) - hashed} by size only)")


def _check_structure(directory: Path, kind: str) -> str | None:
    """The first problem found in a directory without a manifest, or None."""
    required = CHECKPOINT_FILES if kind == "checkpoint" else ()
    for name in required:
        if not (directory / name).is_file():
            return f"{directory / name}: missing"
    if kind == "model" and not any((directory / n).is_file() for n in ("config.json", "adapter_config.json")):
        return f"{directory}: no config.json or adapter_config.json"
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.suffix == ".pt":
            problem = _zip_problem(path)
        elif path.suffix == ".json":
            problem = _json_problem(path)
        else:
            problem = None
        if problem:
            return f"{path}: {problem}"
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))
        weight_map = weight_map.get("weight_map", {}) if isinstance(weight_map, dict) else {}
        shards = {str(v) for v in weight_map.values()} if isinstance(weight_map, dict) else set()
        for shard in sorted(shards):
            if not (directory / shard).is_file():
                return f"{directory / shard}: missing (listed in {index.name})"
    return None


def read_safetensors_header(path: Path) -> tuple[int, dict]:
    """``(N, header)`` of a safetensors file: ``u64 little-endian N``, then N bytes of JSON, then the data."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > path.stat().st_size - 8:
            raise ValueError("header length beyond the end of the file")
        return length, json.loads(f.read(length))


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def safetensors_problem(path: Path) -> str | None:
    """None when the header parses, every tensor's byte range matches its dtype × shape, and the data section
    ends exactly at the end of the file (a truncated copy fails here)."""
    try:
        length, header = read_safetensors_header(path)
    except (OSError, ValueError) as e:
        return f"not a readable safetensors file ({e})"
    if not isinstance(header, dict):
        return "not a readable safetensors file (header is not a JSON object)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            itemsize = _DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r}: malformed header entry"
        if itemsize is not None and stop - start != count * itemsize:
            return f"tensor {name!r}: {stop - start} bytes for dtype {info['dtype']} × shape {info['shape']}"
        end = max(end, stop)
    data = path.stat().st_size - 8 - length
    if data != end:
        return f"data section is {data} bytes, the header describes {end}"
    return None


def _zip_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        return f"not a readable torch.save archive ({e})"
    return f"member {bad} fails its CRC check" if bad else None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"not valid JSON ({e})"
    return None


# ---------------------------------------------------------------------------------------------------------
# rlhf-lab verify RUN_DIR
# ---------------------------------------------------------------------------------------------------------


def _is_checkpoint_dir(path: Path) -> bool:
    return path.parent.name == "checkpoints" and path.name.startswith("step-")


def _is_model_dir(path: Path) -> bool:
    return ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()) and (
        any(path.glob("*.safetensors")) or (path / MANIFEST_NAME).is_file())


def find_checked_dirs(root: Path) -> list[tuple[Path, str]]:
    """Every checkpoint (``checkpoints/step-N``) and exported model directory under ``root``; hidden
    directories (torn saves ``.tmp-*``) are skipped: they are never read."""
    found: list[tuple[Path, str]] = []

    def walk(directory: Path) -> None:
        if _is_checkpoint_dir(directory):
            found.append((directory, "checkpoint"))
            return
        if _is_model_dir(directory):
            found.append((directory, "model"))
        for child in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
            walk(child)

    walk(root)
    return found


@dataclass
class VerifyConfig:
    run_dir: str = arg("", "the run directory (or a tree of them) to check")

    def validate(self) -> None:
        if not self.run_dir:
            raise UserError("--run_dir: give the run directory to verify (`rlhf-lab verify RUN_DIR`)")


@dataclass
class VerifyResult:
    checks: list[DirCheck]

    @property
    def exit_code(self) -> int:
        return 0 if all(c.ok for c in self.checks) else 1


def run(config: VerifyConfig) -> VerifyResult:
    """Print one row per checkpoint and exported model under RUN_DIR; exit 0 when all are intact, 1 otherwise."""
    root = Path(config.run_dir)
    if not root.is_dir():
        raise UserError(f"{config.run_dir}: no such directory")
    dirs = find_checked_dirs(root)
    if not dirs:
        raise UserError(f"{config.run_dir}: no checkpoints (checkpoints/step-N) or exported models found")
    checks = [check_dir(path, kind) for path, kind in dirs]
    rows = [(str(c.path.relative_to(root)) or ".", c.kind, "ok" if c.ok else "DAMAGED", c.detail if c.ok else c.problem)
            for c in checks]
    widths = [max(len(r[i]) for r in [("path", "kind", "status", ""), *rows]) for i in range(3)]
    print(f"{'path':<{widths[0]}}  {'kind':<{widths[1]}}  {'status':<{widths[2]}}  detail")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    damaged = sum(not c.ok for c in checks)
    print(f"verify: {len(checks) - damaged} of {len(checks)} intact" + (f", {damaged} damaged" if damaged else ""))
    return VerifyResult(checks)
