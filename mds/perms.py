"""POSIX permission decisions for the namespace, pure: who may search, read, write,
change mode or owner. No I/O; the caller passes the credentials the broker authenticated.

Theory of operation. A caller is a `Cred` (user name, the groups it belongs to, whether
it is the superuser). An entry carries owner, group and a 12-bit mode (setuid/setgid/
sticky + rwx for owner, group, other). The classic rules, as Linux applies them:
- exactly one class applies: owner if the caller owns the entry, else group if the
  caller is in the entry's group, else other (an owner denied by the owner bits is
  denied even if "other" would allow it);
- the superuser bypasses read and write checks, and search/execute too when any x bit
  is set or the entry is a directory;
- to create, remove or rename an entry the caller needs write and search on the parent;
  in a sticky directory only the entry's owner, the directory's owner or the superuser
  may remove or rename it;
- chmod: owner or superuser (EPERM otherwise); chown: superuser only; chgrp: the owner
  to a group it belongs to, or the superuser.
"""
from __future__ import annotations

import errno
import os
import stat as st
from dataclasses import dataclass, field

R, W, X = 4, 2, 1
SEARCH = X
DEFAULT_UMASK = 0o022
MODE_BITS = 0o7777
# Files that are not regular (the mount's symlinks and special files) keep their kind in
# the S_IFMT bits of the stored mode; their content is the link target. Directories none.
FILE_KINDS = {"symlink": st.S_IFLNK, "fifo": st.S_IFIFO, "socket": st.S_IFSOCK,
              "chardev": st.S_IFCHR, "blockdev": st.S_IFBLK}
KIND_BITS = 0o170000
KIND_NAMES = {v: k for k, v in FILE_KINDS.items()}


def valid_mode(mode: object, is_dir: bool = False) -> bool:
    """A stored mode: the 12 permission bits, and for a file maybe one of FILE_KINDS."""
    if type(mode) is not int or mode < 0 or mode & ~(KIND_BITS | MODE_BITS):
        return False
    return not mode & KIND_BITS or (not is_dir and mode & KIND_BITS in KIND_NAMES)
SUPERUSER = "admin"


@dataclass(frozen=True, slots=True)
class Cred:
    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    superuser: bool = False

    @property
    def group(self) -> str:
        """The primary group: each user has a group of its own name."""
        return self.user

    def in_group(self, group: str) -> bool:
        return group == self.user or group in self.groups


ROOT_CRED = Cred(SUPERUSER, superuser=True)


def _denied(code: int, path: object, detail: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {detail}", path)


def allows(cred: Cred, owner: str, group: str, mode: int, want: int, *,
           is_dir: bool = False) -> bool:
    """Whether `cred` holds every bit of `want` (R|W|X) on an entry."""
    if cred.superuser:
        if not want & X:
            return True
        return is_dir or bool(mode & 0o111)
    if cred.user == owner:
        bits = (mode >> 6) & 7
    elif cred.in_group(group):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def check(cred: Cred, owner: str, group: str, mode: int, want: int, path: object, *,
          is_dir: bool = False, on: str | None = None) -> None:
    """Raise PermissionError (EACCES) unless `cred` holds `want` on the entry; `on` names
    the entry in the message when it is not `path` itself (an ancestor, the parent)."""
    if not allows(cred, owner, group, mode, want, is_dir=is_dir):
        names = "".join(c for c, b in (("r", R), ("w", W), ("x", X)) if want & b)
        where = f" on {on}" if on is not None and on != path else ""
        raise _denied(errno.EACCES, path, f"{cred.user} lacks {names} permission{where}")


def check_sticky(cred: Cred, dir_owner: str, dir_mode: int, entry_owner: str,
                 path: object) -> None:
    """In a sticky directory only the entry's owner, the directory's owner or the
    superuser may remove or rename the entry."""
    if dir_mode & st.S_ISVTX and not (cred.superuser or cred.user in (dir_owner,
                                                                       entry_owner)):
        raise _denied(errno.EACCES, path, "sticky directory: not the owner")


def check_chmod(cred: Cred, owner: str, mode: int, path: object) -> int:
    """The mode to store for a chmod by `cred`; EPERM unless owner or superuser."""
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= MODE_BITS:
        raise _denied(errno.EINVAL, path, f"mode must be 0..0o{MODE_BITS:o}")
    if not (cred.superuser or cred.user == owner):
        raise _denied(errno.EPERM, path, "only the owner may change the mode")
    return mode


def check_chown(cred: Cred, owner: str, group: str, new_owner: str | None,
                new_group: str | None, path: object) -> tuple[str, str]:
    """The (owner, group) after a chown/chgrp by `cred`, or EPERM."""
    if new_owner is not None and new_owner != owner and not cred.superuser:
        raise _denied(errno.EPERM, path, "only the superuser may change the owner")
    if new_group is not None and new_group != group and not cred.superuser:
        if cred.user != owner:
            raise _denied(errno.EPERM, path, "only the owner may change the group")
        if not cred.in_group(new_group):
            raise _denied(errno.EPERM, path, f"{cred.user} is not in group {new_group}")
    return (owner if new_owner is None else new_owner,
            group if new_group is None else new_group)


def new_mode(requested: int | None, *, is_dir: bool, umask: int = DEFAULT_UMASK) -> int:
    """The mode of a new entry: the requested one (default 0o666 / 0o777) less the umask."""
    base = (0o777 if is_dir else 0o666) if requested is None else requested & MODE_BITS
    return base & ~umask


def format_mode(mode: int, *, is_dir: bool = False, is_link: bool = False) -> str:
    """`ls -l` style: drwxr-xr-x, with s/S and t/T for the special bits."""
    kind = "l" if is_link else "d" if is_dir else "-"
    out = []
    for shift, special, letter in ((6, st.S_ISUID, "s"), (3, st.S_ISGID, "s"),
                                   (0, st.S_ISVTX, "t")):
        bits = (mode >> shift) & 7
        out.append("r" if bits & R else "-")
        out.append("w" if bits & W else "-")
        x = bool(bits & X)
        if mode & special:
            out.append(letter if x else letter.upper())
        else:
            out.append("x" if x else "-")
    return kind + "".join(out)
