#!/usr/bin/env python3
"""Which libclang bindgen would load: the search of clang-sys 1.9 (bindgen's loader, `runtime`
feature; build/common.rs and build/dynamic.rs) redone here, then the chosen file dlopen'ed and
accepted only if it exports clang_createIndex. libclang-cpp (the C++ library Debian installs
with LLVM) is not libclang: clang-sys skips it by name and it lacks the C API anyway.

    gen/find-libclang.py        # prints the library's path (exit 0), or why not (stderr, exit 1)
    gen/find-libclang.py -v     # also lists every candidate it saw

Search order (clang-sys's): $LIBCLANG_PATH alone when set (a file or a directory); else
`llvm-config --prefix`/{bin,lib,lib64}, $LD_LIBRARY_PATH, $LIBRARY_PATH, then the globs
/usr/local/llvm*/lib*, /usr/local/lib*/*/*, /usr/local/lib*/*, /usr/local/lib*, /usr/lib*/*/*,
/usr/lib*/*, /usr/lib*. ROTARY_LIBCLANG_SEARCH="dir1:dir2" (globs allowed) replaces all of it,
so tests can point the probe at fake trees. Like clang-sys it takes the highest version found.
Standard library only (used by gen/install-cuda.sh before anything else is installed).
"""
import ctypes
import glob
import os
import subprocess
import sys

FILENAMES = ["libclang.so", "libclang-*.so", "libclang.so.*", "libclang-*.so.*"]
DIRECTORIES_LINUX = ["/usr/local/llvm*/lib*", "/usr/local/lib*/*/*", "/usr/local/lib*/*",
                     "/usr/local/lib*", "/usr/lib*/*/*", "/usr/lib*/*", "/usr/lib*"]


def search_directory(directory):
    """The files in one directory matching FILENAMES, libclang-cpp excluded (as clang-sys)."""
    found = []
    for pattern in FILENAMES:
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), pattern),
                                     include_hidden=True)):
            if "-cpp." not in os.path.basename(path):
                found.append(path)
    return found


def glob_dirs(pattern):
    return [d for d in sorted(glob.glob(pattern, include_hidden=True)) if os.path.isdir(d)]


def llvm_config_dirs():
    try:
        out = subprocess.run(["llvm-config", "--prefix"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    lines = out.splitlines()
    if not lines:
        return []
    return [os.path.join(lines[0], sub) for sub in ("bin", "lib", "lib64")]


def candidates():
    """Every path clang-sys would consider, in its order of preference."""
    restrict = os.environ.get("ROTARY_LIBCLANG_SEARCH")
    if restrict is not None:
        return [p for pat in restrict.split(":") if pat for d in glob_dirs(pat)
                for p in search_directory(d)]
    libclang_path = os.environ.get("LIBCLANG_PATH")
    if libclang_path is not None:
        parent, name = os.path.split(libclang_path.rstrip("/"))
        if name and any(os.path.basename(p) == name for p in search_directory(parent)):
            return [os.path.join(parent, name)]
        return search_directory(libclang_path)
    dirs = llvm_config_dirs()
    for var in ("LD_LIBRARY_PATH", "LIBRARY_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(":") if d]
    for pattern in DIRECTORIES_LINUX:
        dirs += glob_dirs(pattern)
    return [p for d in dirs for p in search_directory(d)]


def version(filename):
    """clang-sys's parse_version: libclang.so.14.0 -> [14, 0], libclang-14.so.1 -> [14, 0]."""
    if filename.startswith("libclang.so."):
        text = filename[len("libclang.so."):]
    elif filename.startswith("libclang-"):
        text = filename[9:-3]
    else:
        return []
    return [int(s) if s.isdigit() else 0 for s in text.split(".")]


def is_elf64(path):
    try:
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        return False
    return head[:4] == b"\x7fELF" and head[4:5] == b"\x02"


def check(path):
    """None if `path` is a loadable libclang, else why not."""
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        return f"cannot be opened ({e})"
    if not hasattr(lib, "clang_createIndex"):
        return "does not export clang_createIndex (not libclang)"
    return None


def main():
    verbose = "-v" in sys.argv[1:]
    found = candidates()
    valid = [p for p in found if is_elf64(p)]
    if verbose:
        for p in found:
            print(f"candidate {p}{'' if p in valid else ' (not a 64-bit ELF file)'}",
                  file=sys.stderr)
    if not valid:
        where = "ROTARY_LIBCLANG_SEARCH" if "ROTARY_LIBCLANG_SEARCH" in os.environ else \
            "LIBCLANG_PATH" if "LIBCLANG_PATH" in os.environ else "the system's library folders"
        print(f"no libclang ({', '.join(FILENAMES)}) in {where}", file=sys.stderr)
        return 1
    # clang-sys takes the highest version; among equals, the first found.
    best = max(valid, key=lambda p: version(os.path.basename(p)))
    why = check(best)
    if why is not None:
        print(f"{best}: {why}", file=sys.stderr)
        return 1
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
