"""Any error a command ends in → one line that names the problem and, where there is one, the fix.

vitkit's own errors are written for people and are shown as they are. An OSError is described from its
errno (disk full, a folder where a file was expected, ...). An error raised inside another library (torch,
onnxruntime, PIL, ...) is shown with its type and a pointer to `--debug`, which shows the traceback.
"""
from __future__ import annotations

import errno
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # src/vitkit
DEBUG_HINT = "run again with --debug to see the traceback"

# errno → (what happened, what to do); {path} is the file the OS names, when it names one
_OS_ERRORS = {
    errno.ENOSPC: ("no space is left on the disk{at}", "free some space, or write to another disk"),
    errno.EDQUOT: ("the disk quota is used up{at}", "free some space, or write to another disk"),
    errno.EISDIR: ("{path} is a folder, where a file was expected", "pass the path of a file"),
    errno.ENOTDIR: ("a part of {path} is a file, where a folder was expected", "check the path"),
    errno.ENOENT: ("{path} does not exist", "check the path"),
    errno.EACCES: ("permission denied for {path}", "check its permissions, or use another path"),
    errno.EPERM: ("the operation is not permitted on {path}", "check its permissions, or use another path"),
    errno.EROFS: ("{path} is on a read-only file system", "write somewhere else"),
    errno.EEXIST: ("{path} already exists", "remove it, or choose another name"),
    errno.ENAMETOOLONG: ("the path {path} is too long", "use a shorter path"),
    errno.EMFILE: ("too many files are open", "raise the limit (ulimit -n) or use fewer data-loader workers"),
    errno.EIO: ("the disk reported an input/output error on {path}", "check the disk, or use another one"),
}


def describe(error: BaseException) -> str:
    """One line (vitkit's own messages may list several items) for any exception a command ends in."""
    if isinstance(error, OSError) and error.errno in _OS_ERRORS:
        return _describe_os_error(error)
    if isinstance(error, OSError) and error.errno is not None and error.strerror:  # another errno, from the OS
        where = f" for {error.filename}" if error.filename is not None else ""
        return f"{error.strerror}{where} (errno {error.errno}): check the path, the disk and the permissions"
    if isinstance(error, KeyError) and error.args and raised_by_vitkit(error):
        key = error.args[0]
        if isinstance(key, str) and " " in key:  # vitkit's own KeyErrors are sentences ("unknown model ...")
            return key  # KeyError's str() would wrap the message in quotes
        return f"a record lacks the field {key!r} (KeyError); {DEBUG_HINT}"  # a bare lookup that failed
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return (f"out of memory ({_text(error) or type(error).__name__}); use a smaller --batch-size or a smaller "
                f"model")
    if raised_by_vitkit(error):
        return _text(error) or type(error).__name__
    origin = type(error).__module__.split(".")[0]
    where = "" if origin == "builtins" else f" in {origin}"
    text = _text(error)
    return f"{type(error).__name__}{where}" + (f": {text}" if text else "") + f"; {DEBUG_HINT}"


def _describe_os_error(error: OSError) -> str:
    what, fix = _OS_ERRORS[error.errno]
    # os.replace(tmp, target) onto a folder names the target second: it is the one to talk about
    second = error.filename2 if error.errno in (errno.EISDIR, errno.EEXIST) else None
    path = second if second is not None else error.filename
    shown = str(path) if path is not None else "a path"
    at = f" (writing {path})" if path is not None else ""
    return f"{what.format(path=shown, at=at)}: {fix}"


def _text(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:
        key = error.args[0]
        return key if isinstance(key, str) and " " in key else repr(key)  # a sentence, or the key that was missing
    return " ".join(str(error).split("\n", 1)[0].split()) if not raised_by_vitkit(error) else str(error)


def raised_by_vitkit(error: BaseException) -> bool:
    """Whether the innermost Python frame of the error's traceback is vitkit's (a message written for people),
    rather than torch's, onnxruntime's or another library's."""
    tb = error.__traceback__
    if tb is None:
        return True  # raised and caught without unwinding: ours
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False
