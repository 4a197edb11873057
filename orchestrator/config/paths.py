"""Paths of a job: how its path settings expand, where the framework writes and deletes (only inside its roots,
and only in directories it created), and which input paths it refuses to read.

`path_inside` builds every run and sweep directory from a root and a name, and refuses one that would lie outside
the root ('..', an absolute name, a symbolic link out of it). A directory the framework creates for a run or a sweep
gets a marker file (`claim`), and `delete_claimed` (`train --restart`) deletes nothing that lacks it, so that neither
a bad name nor a directory of someone else's that happens to carry a run's name can ever be deleted.

Roots may be local paths or URIs that pyarrow opens (s3://bucket/runs, file:///...); a URI's path part is checked.
"""

import json
import os
import posixpath

import pyarrow.fs

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig

MARKER = "orchestrator_dir.json"  # {"kind": ...}: written by `claim` into a directory it creates
MAX_MARKER_BYTES = 4096  # a marker is a few bytes: a huge file of that name is read no further than this
LOCAL_SCHEMES = ("", "file")  # paths on this machine: resolved on disk, symbolic links followed


PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")  # the kernel's views: not data, and some of their files never end


def expand_path(pattern: str) -> str:
    return os.path.expanduser(os.path.expandvars(pattern))


def is_uri(path: str) -> bool:
    return "://" in path


def storage_path(job: JobConfig) -> str:
    """Where the job's runs keep their checkpoints: checkpoint.dir, made absolute unless it is a URI."""
    path = expand_path(job.checkpoint.dir)
    return path if is_uri(path) else os.path.abspath(path)


def pseudo_filesystem(path: str) -> str | None:
    """The pseudo filesystem an absolute path lies in, if any."""
    return next((root for root in PSEUDO_FILESYSTEMS if path == root or path.startswith(root + "/")), None)


def glob_problem(pattern: str) -> str | None:
    """Why a local data path or glob may not be read: it lies in a pseudo filesystem, or its recursive ** starts at
    the filesystem root (it would walk every mounted disk, /proc included). None if it may."""
    path = os.path.abspath(pattern)
    wildcard = min((path.find(char) for char in "*?[" if char in path), default=-1)
    start = os.path.realpath(os.path.dirname(path[:wildcard]) if wildcard >= 0 else path)  # where the walk begins
    if where := pseudo_filesystem(start):
        return f"{where} is a pseudo filesystem, not data"
    if "**" in path and start == "/":
        return "a recursive ** may not start at the filesystem root; start it in the data's directory"
    return None


def _split_uri(path: str) -> tuple[str, str]:
    scheme, sep, rest = path.partition("://")
    return (scheme, rest) if sep else ("", path)


def path_inside(root: str, name: str, field: str) -> str:
    """`root`/`name`, which must lie inside `root` (not be root itself) once resolved; else a UserError naming
    `field`, the key the name came from."""
    scheme, root_path = _split_uri(root)
    if scheme in LOCAL_SCHEMES:
        joined = os.path.normpath(os.path.join(root_path, name))
        try:
            real_root, real = os.path.realpath(root_path), os.path.realpath(joined)
        except (ValueError, OSError) as err:  # a NUL byte, a symbolic link loop
            raise UserError(f"{field}: {root}/{name} cannot be resolved ({err})") from None
    else:  # an object store has no links: the path itself must stay in
        joined = real = posixpath.normpath(posixpath.join(root_path, name))
        real_root = posixpath.normpath(root_path)
    if real == real_root or not _contains(real_root, real):
        raise UserError(f"{field}: {name!r} would put files outside {root} (resolved: {real})")
    return f"{scheme}://{joined}" if scheme else joined


def _contains(root: str, path: str) -> bool:
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # one absolute, one relative
        return False


def _marker_kind(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """The kind a claimed directory was created as; None when it carries no (readable) marker."""
    marker = f"{path}/{MARKER}"
    if fs.get_file_info(marker).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(marker) as stream:
        try:
            return json.loads(stream.read(MAX_MARKER_BYTES)).get("kind")
        except (ValueError, AttributeError):
            return None


def claim(directory: str, kind: str, field: str) -> None:
    """Creates `directory` for a `kind` ("run", "sweep") with its marker, or checks that it is one already. An
    existing directory that is not (a non-empty one without the marker, or one of another kind) is refused."""
    fs, path = pyarrow.fs.FileSystem.from_uri(directory)
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.Directory:
        found = _marker_kind(fs, path)
        if found == kind:
            return
        if found is not None:
            raise UserError(f"{field}: {directory} is an orchestrator {found} directory, not a {kind}; choose another name")
        if fs.get_file_info(pyarrow.fs.FileSelector(path)):
            raise UserError(
                f"{field}: {directory} already holds files and was not created by orchestrator (it has no {MARKER}); choose another name, or move it away"
            )
    elif info.type != pyarrow.fs.FileType.NotFound:
        raise UserError(f"{field}: {directory} is a file, not a directory; choose another name")
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{MARKER}") as stream:
        stream.write(json.dumps({"kind": kind, "created_by": "orchestrator"}).encode())


def delete_claimed(root: str, name: str, kind: str, field: str) -> str | None:
    """Deletes `root`/`name` with all it holds, only if it lies inside root and carries the marker of a `kind`
    directory; else a UserError. Returns the directory deleted, None if there was none."""
    directory = path_inside(root, name, field)
    fs, path = pyarrow.fs.FileSystem.from_uri(directory)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    if _split_uri(directory)[0] in LOCAL_SCHEMES and os.path.islink(path):
        raise UserError(f"{field}: {directory} is a symbolic link; orchestrator deletes only directories it created")
    found = _marker_kind(fs, path)
    if found != kind:
        what = f"an orchestrator {found} directory" if found else f"not created by orchestrator (it has no {MARKER})"
        raise UserError(f"{field}: {directory} is {what}; not deleting it")
    fs.delete_dir(path)
    return directory
