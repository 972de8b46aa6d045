"""``release_loaded_pages`` drops a file's clean read-only pages from the resident set, and never a
page the process wrote (a private mapping's copy-on-write page would silently revert to the file)."""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

from cht_interop.kit.arenas import release_loaded_pages

PAGES = 64


def _resident_kib(path: Path) -> int:
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and ":" not in fields[0]:
            current = len(fields) == 6 and fields[5] == str(path.resolve())
        elif current and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def _mapped(path: Path, prot: int) -> mmap.mmap:
    with path.open("rb" if prot == mmap.PROT_READ else "r+b") as fh:
        return mmap.mmap(fh.fileno(), PAGES * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE, prot=prot)


def test_clean_pages_leave_the_resident_set_and_read_back_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clean.bin"
    path.write_bytes(b"x" * PAGES * mmap.PAGESIZE)
    view = _mapped(path, mmap.PROT_READ)
    assert view[:] == path.read_bytes()  # every page read: resident
    assert _resident_kib(path) >= PAGES * mmap.PAGESIZE // 1024
    assert release_loaded_pages(path) == PAGES * mmap.PAGESIZE
    assert _resident_kib(path) == 0
    assert view[:] == path.read_bytes()


def test_a_page_the_process_wrote_is_kept(tmp_path: Path) -> None:
    """As the loader's relocations, then made read-only (RELRO): ``r--p`` with a page of its own."""
    path = tmp_path / "written.bin"
    path.write_bytes(b"x" * PAGES * mmap.PAGESIZE)
    view = _mapped(path, mmap.PROT_READ | mmap.PROT_WRITE)
    view[:5] = b"wrote"
    cell = ctypes.c_char.from_buffer(view)
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.addressof(cell), PAGES * mmap.PAGESIZE, mmap.PROT_READ) == 0
    assert release_loaded_pages(path) == 0
    assert view[:5] == b"wrote"
    del cell
