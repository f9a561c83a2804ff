"""Build llama.cpp's own tools against the installed llama-cpp-python, so that they run the very same
llama.cpp machine code as llmctl: the anchors of the benchmarks and of the format tests.

`build_llama_bench()`: tools/llama-bench from the sdist of the installed llama-cpp-python (its
`vendor/llama.cpp`), compiled with the `common/` sources it needs and a generated build-info.cpp, and
linked against the package's own shared libraries (`llama_cpp/lib/libllama.so`, `libggml*.so`) rather
than a second build of llama.cpp. No CMake: the compiler (c++, or $CXX) only, under `nice`, one job
per CPU; about 2 minutes on 2 cores.

- The sdist: $LLMCTL_LLAMA_CPP_SDIST, else the one cached beside the binary, else `pip download
  llama-cpp-python==<installed version> --no-binary :all: --no-deps` (the ordinary client of the
  package registry; no compiling).
- The binary is cached outside the repository, in ~/.cache/llmctl-bench/<version>/<key>/llama-bench
  ($LLMCTL_BENCH_CACHE instead of ~/.cache/llmctl-bench), where <key> is a hash of the library
  directory and of libllama.so: the binary finds the libraries by an rpath to that directory, so each
  venv (and each rebuild of the wheel) has its own. Written atomically; a cached binary that no
  longer runs is rebuilt.
- build-info: the commit is the one the installed libggml reports (less "-dirty", as llama-bench's
  build-info records a commit), the build number 0 (llama-cpp-python does not expose one), so that
  llama-bench and `llmctl bench` write the same build_commit and build_number.
- AMX: llmctl loads models without llama.cpp's repacked weights on AMX CPUs (llmctl/llamacompat.py);
  pass this llama-bench `--repack 0` there (`llama_bench_repack_args()`), so both load them alike.

Usage: python benchmarks/llamacpp_build.py [--sdist FILE] [--cache DIR]   (prints the binary's path)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

# What llama-bench needs from the sdist's vendor/llama.cpp (llama-cpp-python 0.3.36, llama.cpp 0c1e570):
# its sources, the common/ files that define what it calls (with --gc-sections the linker drops the
# rest of them: sampling, chat, ... are never linked), and the headers.
LLAMA_BENCH_SOURCES = (
    "tools/llama-bench/llama-bench.cpp", "tools/llama-bench/main.cpp",
    "common/common.cpp", "common/log.cpp", "common/fit.cpp", "common/arg.cpp", "common/json.cpp",
    "common/download.cpp", "common/hf-cache.cpp", "common/speculative.cpp",
    "vendor/cpp-httplib/httplib.cpp",
)
LLAMA_BENCH_TREES = ("include", "ggml/include", "src", "common", "tools/llama-bench", "vendor")
_VENDOR_PREFIX = "vendor/llama.cpp/"


def installed_llama_cpp() -> tuple[str, Path]:
    """The installed llama-cpp-python: its version and the directory of its shared libraries."""
    from importlib.metadata import version

    import llama_cpp

    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    if not (lib / "libllama.so").exists():
        raise RuntimeError(f"no libllama.so in {lib}: this llama-cpp-python does not ship shared libraries")
    return version("llama_cpp_python"), lib


def installed_ggml_commit() -> str:
    """The commit the installed libggml reports (e.g. 0c1e570-dirty); 'unknown' when it does not say."""
    import ctypes

    from llama_cpp import _ggml

    fn = getattr(_ggml.libggml, "ggml_commit", None)
    if fn is None:
        return "unknown"
    fn.restype, fn.argtypes = ctypes.c_char_p, []
    return (fn() or b"unknown").decode(errors="replace")


def _cache_root(cache: Path | None) -> Path:
    if cache is not None:
        return cache
    env = os.environ.get("LLMCTL_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "llmctl-bench"


def llama_cpp_sdist(version: str, where: Path, say: Callable[[str], None]) -> Path:
    """The sdist of llama-cpp-python `version`: $LLMCTL_LLAMA_CPP_SDIST, one in `where`, or downloaded
    there with pip."""
    env = os.environ.get("LLMCTL_LLAMA_CPP_SDIST")
    if env:
        return Path(env)
    name = f"llama_cpp_python-{version}.tar.gz"
    if (where / name).is_file():
        return where / name
    where.mkdir(parents=True, exist_ok=True)
    say(f"downloading the llama-cpp-python {version} sdist with pip")
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"llama-cpp-python=={version}"], check=True)
        got = Path(tmp) / name
        if not got.is_file():
            raise RuntimeError(f"pip download did not produce {name} (got: {os.listdir(tmp)})")
        os.replace(got, where / name)
    return where / name


def extract_llama_cpp(sdist: Path, dest: Path, trees: tuple[str, ...]) -> Path:
    """Extract the given trees of the sdist's vendor/llama.cpp into dest; return the llama.cpp root."""
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            _, _, rel = m.name.partition("/")  # strip llama_cpp_python-<version>/
            if not rel.startswith(_VENDOR_PREFIX) or not (m.isfile() or m.isdir()):
                continue
            inner = rel[len(_VENDOR_PREFIX):]
            if any(inner == t or inner.startswith(t + "/") for t in trees):
                m.name = inner
                members.append(m)
        if not members:
            raise RuntimeError(f"{sdist} has no {_VENDOR_PREFIX} (is it llama-cpp-python's sdist?)")
        tar.extractall(dest, members=members, filter="data")
    return dest


def build_info_source(template: Path, commit: str, number: int, compiler: str) -> str:
    """common/build-info.cpp from its template, as llama.cpp's CMake configures it."""
    text = template.read_text()
    for key, value in (("LLAMA_BUILD_NUMBER", str(number)), ("LLAMA_BUILD_COMMIT", commit),
                       ("BUILD_COMPILER", compiler), ("BUILD_TARGET", f"{platform.system()} {platform.machine()}")):
        text = text.replace(f"@{key}@", value)
    return text


def _compile(cxx: str, src: Path, obj: Path, includes: list[Path]) -> None:
    argv = ["nice", "-n", "10", cxx, "-std=c++17", "-O2", "-DNDEBUG", "-fPIC", "-ffunction-sections",
            "-fdata-sections", "-pthread", *(f"-I{i}" for i in includes), "-c", str(src), "-o", str(obj)]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {src.name} failed:\n{r.stderr[-4000:]}")


def _runs(binary: Path) -> bool:
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def build_llama_bench(*, sdist: Path | None = None, cache: Path | None = None, jobs: int | None = None,
                      say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> Path:
    """llama.cpp's llama-bench linked against the installed llama-cpp-python's libraries; cached."""
    version, lib = installed_llama_cpp()
    libllama = (lib / "libllama.so").resolve()
    key = hashlib.sha256(str(lib).encode() + b"\0" + hashlib.sha256(libllama.read_bytes()).digest()).hexdigest()[:12]
    root = _cache_root(cache) / version
    out_dir = root / key
    binary = out_dir / "llama-bench"
    if binary.is_file() and _runs(binary):
        return binary
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler (c++ or $CXX) to build llama-bench")
    sdist = sdist or llama_cpp_sdist(version, root, say)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
        work = Path(tmp)
        src = extract_llama_cpp(sdist, work / "llama.cpp", LLAMA_BENCH_TREES)
        compiler = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        commit = installed_ggml_commit().removesuffix("-dirty")
        (work / "build-info.cpp").write_text(build_info_source(src / "common" / "build-info.cpp.in", commit, 0,
                                                               compiler))
        sources = [src / s for s in LLAMA_BENCH_SOURCES] + [work / "build-info.cpp"]
        includes = [src / "include", src / "ggml" / "include", src / "common", src / "vendor",
                    src / "vendor" / "cpp-httplib"]
        objs = [work / f"{i}-{s.stem}.o" for i, s in enumerate(sources)]
        say(f"compiling llama-bench ({len(sources)} files, llama-cpp-python {version}, commit {commit})")
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            futures = [pool.submit(_compile, cxx, s, o, includes) for s, o in zip(sources, objs)]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        tmp_bin = work / "llama-bench"
        r = subprocess.run([cxx, "-o", str(tmp_bin), *map(str, objs), "-Wl,--gc-sections", f"-L{lib}", "-lllama",
                            "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}", "-pthread"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"linking llama-bench failed:\n{r.stderr[-4000:]}")
        if not _runs(tmp_bin):
            raise RuntimeError(f"the llama-bench just built does not run ({tmp_bin} --version)")
        os.replace(tmp_bin, binary)
    say(f"built {binary}")
    return binary


def llama_bench_repack_args() -> list[str]:
    """llama-bench's flag for the weight buffers llmctl uses on this CPU (off on AMX, see llamacompat)."""
    from llmctl.llamacompat import default_extra_bufts

    return ["--repack", "1" if default_extra_bufts() else "0"]


def main() -> None:
    ap = argparse.ArgumentParser(description="Build llama-bench against the installed llama-cpp-python.")
    ap.add_argument("--sdist", type=Path, help="llama-cpp-python's sdist (default: downloaded with pip)")
    ap.add_argument("--cache", type=Path, help="where binaries are kept (default: ~/.cache/llmctl-bench)")
    args = ap.parse_args()
    print(build_llama_bench(sdist=args.sdist, cache=args.cache))


if __name__ == "__main__":
    main()
