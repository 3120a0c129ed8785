#!/usr/bin/env python3
"""Small-file and metadata workloads for `tools/bench fs` (one process, one file at a time).

  bench-fileops.py meta DIR COUNT    create (open O_CREAT|O_EXCL + close) COUNT empty files in DIR, then
                                     syncfs; drop the kernel's caches; stat each; unlink each.
                                     Prints "create/s N stat/s N unlink/s N".
  bench-fileops.py small DIR COUNT   write COUNT files of 16 KiB (open, one write, close; distinct
                                     contents so nothing deduplicates), then syncfs. Prints "files/s N".

DIR must not exist (it is created, and left empty or full for the caller to remove).
Dropping caches needs root; it is skipped (and said on stderr) otherwise.
"""
import ctypes
import os
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)


def syncfs(directory):
    """syncfs(2) of the file system holding `directory` (not sync(2): other file systems stay out)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)


def drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except PermissionError:
        print("bench-fileops: cannot drop caches (not root); stat runs warm", file=sys.stderr)


def meta(directory, count):
    os.mkdir(directory)
    paths = [os.path.join(directory, "f%06d" % i) for i in range(count)]
    start = time.perf_counter()
    for path in paths:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    syncfs(directory)
    create = count / (time.perf_counter() - start)

    drop_caches()
    start = time.perf_counter()
    for path in paths:
        os.lstat(path)
    stat = count / (time.perf_counter() - start)

    start = time.perf_counter()
    for path in paths:
        os.unlink(path)
    syncfs(directory)
    unlink = count / (time.perf_counter() - start)
    print("create/s %d stat/s %d unlink/s %d" % (create, stat, unlink))


def small(directory, count):
    os.mkdir(directory)
    base = bytearray(os.urandom(16384))
    start = time.perf_counter()
    for i in range(count):
        base[0:8] = i.to_bytes(8, "little")
        fd = os.open(os.path.join(directory, "s%06d" % i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            view = memoryview(base)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    syncfs(directory)
    print("files/s %d" % (count / (time.perf_counter() - start)))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("meta", "small"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    {"meta": meta, "small": small}[sys.argv[1]](sys.argv[2], int(sys.argv[3]))
