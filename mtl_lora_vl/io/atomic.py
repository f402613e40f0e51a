"""Atomic writes: a file or a directory appears under its final name complete, or not at all.

Everything that persists results (training checkpoints, adapter directories, exports, merged
checkpoints) writes through :func:`atomic_file` or :func:`atomic_dir`: the content goes to a temporary
entry beside the target (same filesystem), is flushed to disk, gets the usual umask-based permissions
(``mkstemp`` / ``mkdtemp`` create private 0600 / 0700 entries) and is then renamed into place. An exception
leaves the old target as it was and no temporary behind. A killed process (SIGKILL, power loss) leaves its
temporary (``.<name>.XXXXXXXX.tmp``, as large as what it was writing): the next write of the same target deletes
those whose writer is gone. A writer holds a ``flock`` on its temporary while it writes, which the kernel lets go
however the process ends; a temporary whose lock cannot be taken (a writer alive, on this machine or, where the
file system's locks are shared, another), or where the file system cannot lock, is left alone. An existing target
is replaced only with ``overwrite=True``; an old directory is removed only once the new one is in place.
A target that is a symbolic link is written through it: its target gets the new content, the link stays.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ..signal_handlers import signals_held
from ..whole_files import read_whole

try:
    import fcntl
except ImportError:   # not POSIX: no locks, so no temporary is known to be stale and none is deleted
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = ["atomic_dir", "atomic_file", "check_asset_dir", "check_target", "holds", "linked_out_of"]

_AT_FDCWD = -100        # renameat2: paths relative to the working directory
_RENAME_EXCHANGE = 2    # renameat2: swap the two entries


def holds(folder: str | Path, path: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both resolved): replacing ``folder`` would remove it."""
    folder, path = Path(folder).resolve(), Path(path).resolve()
    return path == folder or folder in path.parents


def linked_out_of(folder: str | Path, entry: str | Path) -> Path | None:
    """Where ``entry`` (a file in ``folder``) leads when a symbolic link takes it out of ``folder``, else None. A
    Hugging Face hub cache snapshot's links to its own blobs (``snapshots/<rev>/f -> ../../blobs/<sha>``, also from a
    subfolder of the snapshot: a model saved under ``subfolder=``) stay in, and so do a ``local_dir`` download's links
    to a hub cache's blobs (``models--org--name/blobs/<sha>``: huggingface_hub before 0.23 linked files over 5 MB)
    where a snapshot of that repo holds the file under the link's name, as that blob: the link is the download's own,
    not one into another repo's blobs (a private repo's file). A link loop is refused by name."""
    try:
        folder, target = Path(folder).resolve(), Path(entry).resolve()
    except RuntimeError as e:   # a loop, before Python 3.13
        _loop(entry, e)
    try:   # from Python 3.13 on, resolve leaves a loop unresolved and raises nothing: stat does
        target.stat()
    except OSError as e:   # (another error, a dangling link: where it leads is still told)
        if e.errno == errno.ELOOP:
            _loop(entry, e)
    return _outside(folder, target, Path(entry).absolute().parts)


def _loop(entry: str | Path, e: Exception) -> NoReturn:
    """Refuse ``entry``, a symbolic link loop (``e``: what resolving or reading it raised), by name."""
    raise OSError(errno.ELOOP, f"{entry}: a symbolic link loop (its links lead back to themselves, {e}); remove the "
                  "link or point it at a file") from None


def _outside(folder: Path, target: Path, entry: tuple[str, ...]) -> Path | None:
    """``target`` (resolved) where it is outside ``folder`` (resolved) and not a hub snapshot's blob, else None.
    ``entry``: the parts of the link's own path (a download's file name in its repo is its last one or more)."""
    if target.is_relative_to(folder):
        return None
    snapshot = next((p for p in (folder, *folder.parents) if p.parent.name == "snapshots"), None)
    if snapshot is not None and target.parent == snapshot.parent.parent / "blobs":
        return None
    repo = target.parent.parent
    if target.parent.name == "blobs" and repo.name.startswith("models--") and (repo / "snapshots").is_dir():
        names = [Path(*entry[-k:]) for k in range(1, min(len(entry), 8))]   # tokenizer.json, llava/tokenizer.json...
        snapshots = [s for s in (repo / "snapshots").iterdir() if s.is_dir()]
        if any(os.path.realpath(s / name) == str(target) for s in snapshots for name in names):
            return None
    return target


def check_target(path: str | Path, *, directory: bool, overwrite: bool = False, what: str = "write") -> None:
    """Raise what :func:`atomic_dir` (``directory``) or :func:`atomic_file` would raise for ``path`` before
    writing anything: a caller that writes several targets checks them all first."""
    path = _through_link(Path(path), what)
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what}: {existing} is a file, so {path} cannot be made inside it; choose "
                                 "another path")
    if directory:
        if holds(path, Path.cwd()):
            raise IsADirectoryError(f"{what}: {path} is the current directory or holds it; a directory is written "
                                    "beside its target and renamed into place, which cannot be done to the one you "
                                    f"are in: choose a new folder (e.g. {path / 'out'})")
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{what}: {path} exists and is a file; choose a directory path")
        held = _listing(path, what) if path.is_dir() else []
        if held and not overwrite:
            raise FileExistsError(f"{what}: {path} already exists and is not empty; pass overwrite=True "
                                  "(--overwrite) to replace it -- the whole folder: everything in it "
                                  f"({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}) is deleted, not only the "
                                  f"files {what} writes -- or choose another path")
        return
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {path} is a directory; choose a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what}: {path} already exists; pass overwrite=True (--overwrite) or "
                              "choose another path")


def _listing(folder: Path, what: str) -> list[str]:
    """The sorted names in ``folder``; a folder that cannot be read is refused by name, not with a bare
    PermissionError: whether it holds anything (and what replacing it deletes) cannot be told."""
    try:
        return sorted(p.name for p in folder.iterdir())
    except PermissionError as e:
        raise PermissionError(f"{what}: {folder} is a folder that cannot be read ({e.strerror or e}: not yours, or its "
                              "permissions), so what it holds cannot be told, nor whether writing there replaces it; "
                              f"make it readable (chmod u+rwx {folder}) or choose another path") from None


def check_writable_file(path: str | Path, what: str, own_keys: tuple[str, ...] = ()) -> bool:
    """:func:`check_target` for a file that may be replaced, and that a file can be made in its folder (or, where
    that folder is still to be made, in the nearest one that exists): for a result written after minutes of work (a
    benchmark's JSON), checked before the work; nothing is left behind. ``own_keys``: an existing file is replaced
    only where it is a JSON object holding these keys (an earlier result of the same writer). Returns whether a
    file is there to be replaced."""
    check_target(path, directory=False, overwrite=True, what=what)
    folder = next(p for p in Path(path).absolute().parents if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OSError(f"{what} {path}: cannot write there ({e.strerror or e})") from None
    target = _through_link(Path(path), what)
    if not target.is_file():
        return False
    if own_keys:
        try:
            doc = json.loads(read_whole(target))
        except (OSError, UnicodeDecodeError, ValueError):
            doc = None
        if not (isinstance(doc, dict) and all(k in doc for k in own_keys)):
            raise FileExistsError(f"{what} {path}: exists and is not an earlier result of this script (a JSON object "
                                  f"with {', '.join(map(repr, own_keys))}), so it is not replaced; choose another "
                                  "path, or delete the file first")
    return True


def _through_link(path: Path, what: str) -> Path:
    """What a symbolic link ``path`` points to, else ``path``: a write goes through a link to its target (the
    temporary beside the target, on its filesystem) rather than replacing the link with a copy."""
    if not path.is_symlink():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} is a symbolic link to {os.readlink(path)}, which does not exist "
                                "(or is a loop of links); remove the link or choose another path")
    return path.resolve()


def check_asset_dir(path: str | Path, marker: str, key: str, what: str, own: Collection[str] = ()) -> None:
    """Raise unless ``path`` is new, empty, or a folder whose JSON file ``marker`` holds ``key`` -- one the same
    writer made, which ``atomic_dir(path, overwrite=True)`` may then replace. For writers with a default output
    folder (the asset scripts): they replace their own output, never a folder of the user's (every open_clip model
    folder holds an open_clip_config.json: the file alone replaced a user's weights). ``own``: the names the writer
    puts there; an earlier output holding anything else (a user's notes, a model built into a subfolder) is
    refused too, since replacing the folder would delete it."""
    path = Path(path)
    check_target(path, directory=True, overwrite=True, what=what)
    folder = next(p for p in path.absolute().parents if p.exists())   # where the temporary folder will be made
    try:   # before the minutes of work whose result goes there
        tempfile.TemporaryDirectory(dir=folder, prefix=".write-check-").cleanup()
    except OSError as e:
        raise OSError(f"{what} {path}: cannot write there ({e.strerror or e})") from None
    if not path.is_dir() or not any(path.iterdir()):
        return
    try:
        doc = json.loads(read_whole(path / marker))
    except (OSError, UnicodeDecodeError, ValueError):
        doc = None
    if not isinstance(doc, dict) or key not in doc:
        raise FileExistsError(f"{what}: {path} is not empty and holds no {marker} with {key!r} in it, so it is not an "
                              "earlier output of this script and is not replaced; choose a new or empty folder")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own) if own else []
    if foreign:
        raise FileExistsError(f"{what}: {path} is an earlier output of this script but also holds "
                              f"{', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}, which replacing the "
                              "folder would delete; move them out first, or choose a new or empty folder")


@contextmanager
def atomic_file(path: str | Path, *, overwrite: bool = False, what: str = "write") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it in the ``with`` body; it becomes ``path`` on success.

    ``what`` names the caller in error messages. An existing ``path`` is refused unless ``overwrite``.
    """
    path = _through_link(Path(path), what)
    check_target(path, directory=False, overwrite=overwrite, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp, lock = _claimed(lambda: _mkstemp(path), os.unlink)
    try:
        yield tmp
        _fsync(tmp)
        _normal_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _release(lock)
    _fsync_dir(path.parent)


@contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False, what: str = "write") -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; fill it in the ``with`` body; it becomes ``path``.

    A non-empty ``path`` is refused unless ``overwrite``; then the old directory is moved aside and
    deleted only after the new one is in place. On an exception the temporary directory is removed.
    """
    path = _through_link(Path(path), what)
    check_target(path, directory=True, overwrite=overwrite, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp, lock = _claimed(lambda: Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)),
                         os.rmdir)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _normal_permissions(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _release(lock)
    _fsync_dir(path.parent)


def _mkstemp(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _lock(entry: Path) -> int | None:
    """An open descriptor of ``entry`` (a file or a folder) holding an exclusive ``flock`` on it; None where the
    system or file system cannot lock. BlockingIOError when another holds it; FileNotFoundError when it is gone."""
    if fcntl is None:
        return None
    fd = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:   # (NFS's flock of a read-only descriptor: EBADF; ENOLCK, ENOSYS ...)
        os.close(fd)
        return None
    if not os.path.samestat(os.fstat(fd), os.lstat(entry)):   # deleted (by a cleaner) before the lock was had
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "removed before it was locked", str(entry))
    return fd


def _claimed(make: Callable[[], Path], remove: Callable[[Path], None]) -> tuple[Path, int | None]:
    """A new temporary from ``make`` and the lock that marks its writer alive (:func:`_remove_stale`): one that
    another writer's clean-up took between its making and its locking is left to that clean-up, and another made."""
    for _ in range(100):
        tmp = make()
        try:
            return tmp, _lock(tmp)
        except FileNotFoundError:
            continue
        except BlockingIOError:   # a clean-up holds it and deletes it
            continue
        except BaseException:
            remove(tmp)
            raise
    raise OSError(f"cannot make a temporary beside {tmp.parent / tmp.name.rsplit('.', 2)[0][1:]}: each one made "
                  "was deleted at once by another process")


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _remove_stale(path: Path) -> list[Path]:
    """Delete the temporaries that writers of ``path`` killed mid-write left (``.<name>.XXXXXXXX.tmp``, the names
    :func:`atomic_file` and :func:`atomic_dir` make, of this target only), where their lock can be taken: its writer
    is gone. One held (a writer alive), one that cannot be locked and anything else are left. Returns those deleted."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")   # tempfile's 8 characters
    try:
        found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and not p.is_symlink()]
    except OSError:
        return []
    gone = []
    for tmp in found:
        try:
            fd = _lock(tmp)
        except OSError:   # held by a live writer, or gone already
            continue
        if fd is None:
            continue
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            gone.append(tmp)
        except OSError as e:
            logger.warning("%s: could not delete %s, which a killed writer left (%s)", path, tmp.name, e)
        finally:
            os.close(fd)
    if gone:
        logger.warning("%s: deleted %d unfinished temporar%s that killed writers left (%s)", path, len(gone),
                       "y" if len(gone) == 1 else "ies", ", ".join(p.name for p in gone))
    return gone


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or filesystem cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``; an old ``path`` is removed only once the new one is there.

    Where the system can swap two directories atomically the old one is exchanged with ``tmp`` and then
    deleted, so there is no moment without ``path``; elsewhere it is moved aside first, and a crash (SIGKILL)
    between the two renames leaves it in a hidden ``.<name>.*.old`` folder beside the target. A Ctrl-C or SIGTERM
    there waits until both renames are done and the old one deleted (or, where the second rename fails, until they
    are undone): a SIGTERM whose default handler kills the process left that folder behind."""
    if path.is_dir() and not path.is_symlink() and any(path.iterdir()) and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)   # now the old directory
        return
    old = None
    with signals_held():   # (a second Ctrl-C in the put-back below left the old one in .<name>.*.old)
        if path.is_dir():
            if any(path.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            else:
                path.rmdir()
        try:
            if old is not None:
                os.replace(path, old / "dir")
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                _put_back(old, tmp, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _put_back(old: Path, tmp: Path, path: Path) -> None:
    """Undo :func:`_replace_dir`'s two renames, whichever were done when an exception (a signal between two
    bytecodes included) stopped it: the old directory back at ``path``, unless the new one is there already."""
    if not os.path.lexists(tmp):   # the new one is in place: the write is done
        shutil.rmtree(old, ignore_errors=True)
        return
    if os.path.lexists(old / "dir"):
        os.replace(old / "dir", path)
    old.rmdir()


def _normal_permissions(root: Path) -> None:
    """Give ``root`` (and everything under it) the modes a plain ``open`` / ``mkdir`` would have."""
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _fsync(file: Path) -> None:
    """Flush ``file``'s data to disk, so that the rename never publishes an empty or partial file."""
    fd = os.open(file, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
