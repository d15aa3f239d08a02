"""chmod mode arguments, as coreutils reads them: octal (644, 0755, 4755) or symbolic
clauses (u+x,go-w  a=r  +t  g=u  u+X) applied to an entry's current mode. Pure: no I/O.

Symbolic grammar: clauses separated by commas; each is [ugoa]* then one or more
operations [+-=] followed by permission letters [rwxXst] or one of [ugo] (copy those
bits). With no [ugoa], the clause applies to all classes but leaves the bits the umask
(022) masks out, as coreutils does; `X` is x only for a directory or an entry that already
has some x bit.
"""
from __future__ import annotations

import re
import stat as st
from dataclasses import dataclass
from typing import Callable

from mds.perms import DEFAULT_UMASK, MODE_BITS

_CLASS = {"u": 0o4700, "g": 0o2070, "o": 0o1007}   # rwx bits plus the special bit a class owns
_OCTAL = re.compile(r"[0-7]{1,4}")
# [ugo] before the letters: an empty letter list would otherwise match first
_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_OP = re.compile(r"([-+=])([ugo]|[rwxXst]*)")


class ModeError(ValueError):
    """A mode argument that is neither octal nor valid symbolic clauses."""


@dataclass(frozen=True)
class Mode:
    """A parsed mode argument: ``apply(current, is_dir)`` gives the new 12 bits."""
    text: str
    absolute: int | None                       # the octal value, when it was octal
    _apply: Callable[[int, bool], int]

    def apply(self, current: int, is_dir: bool = False) -> int:
        return self._apply(current & MODE_BITS, is_dir) & MODE_BITS

    @property
    def needs_current(self) -> bool:
        """Symbolic modes are relative to the entry's present mode."""
        return self.absolute is None


def parse_mode(text: str) -> Mode:
    """A Mode for `text`, or ModeError saying what is wrong."""
    if _OCTAL.fullmatch(text):
        value = int(text, 8)
        return Mode(text, value, lambda cur, is_dir: value)
    clauses = text.split(",")
    steps = []
    for clause in clauses:
        m = _CLAUSE.fullmatch(clause)
        if not m:
            raise ModeError(f"invalid mode {text!r}: {clause!r} is not like u+x, go-w, a=r "
                            f"or an octal number such as 644")
        steps.append((m.group(1), _OP.findall(m.group(2))))

    def apply(cur: int, is_dir: bool) -> int:
        for who, ops in steps:
            mask = MODE_BITS if not who or "a" in who else 0
            for c in who:
                if c in _CLASS:
                    mask |= _CLASS[c]
            # no class named: the umask's bits are left alone (coreutils)
            keep_out = DEFAULT_UMASK if not who else 0
            for op, perms in ops:
                bits = _bits(perms, cur, is_dir) & mask & ~keep_out
                if op == "+":
                    cur |= bits
                elif op == "-":
                    cur &= ~bits
                else:
                    # "=" clears the classes' bits, the umask's too (and their special
                    # bits, except a directory's setuid/setgid, which coreutils keeps)
                    clear = mask
                    if is_dir:
                        clear &= ~(st.S_ISUID | st.S_ISGID)
                    cur = (cur & ~clear) | bits
        return cur

    return Mode(text, None, apply)


def _bits(perms: str, cur: int, is_dir: bool) -> int:
    """The bits the letters of one operation stand for, in every class."""
    if perms in ("u", "g", "o"):     # copy a class's current rwx to every class
        shift = {"u": 6, "g": 3, "o": 0}[perms]
        rwx = (cur >> shift) & 7
        return rwx << 6 | rwx << 3 | rwx
    out = 0
    for c in perms:
        if c == "r":
            out |= 0o444
        elif c == "w":
            out |= 0o222
        elif c == "x" or (c == "X" and (is_dir or cur & 0o111)):
            out |= 0o111
        elif c == "s":
            out |= st.S_ISUID | st.S_ISGID
        elif c == "t":
            out |= st.S_ISVTX
    return out


def parse_owner(text: str) -> tuple[str | None, str | None]:
    """`chown` arguments: OWNER, OWNER:GROUP, OWNER: (group unchanged) or :GROUP."""
    owner, sep, group = text.partition(":")
    owner_v = owner or None
    group_v = group or None
    if (owner_v is None and group_v is None) or ":" in group:
        raise ModeError(f"invalid owner {text!r}: expected OWNER, OWNER:GROUP or :GROUP")
    return owner_v, group_v
