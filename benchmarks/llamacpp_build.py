"""Build llama.cpp's own tools against the installed llama-cpp-python, so that they run the very same
llama.cpp machine code as llmctl: the anchors of the benchmarks and of the format tests.

`build_llama_bench()`: tools/llama-bench; `build_llama_server()`: tools/server (llama-server). Both from
the sdist of the installed llama-cpp-python (its `vendor/llama.cpp`), compiled with the `common/`
sources they need and a generated build-info.cpp, and linked against the package's own shared
libraries (`llama_cpp/lib/libllama.so`, `libggml*.so`, and `libmtmd.so` for the server) rather than a
second build of llama.cpp. No CMake: the compiler (c++, or $CXX) only, under `nice`, one job per CPU;
llama-bench takes about 2 minutes on 2 cores, llama-server (all of common/, chat parsers, jinja)
about 10.

- The sdist: $LLMCTL_LLAMA_CPP_SDIST, else the one cached beside the binary, else `pip download
  llama-cpp-python==<installed version> --no-binary :all: --no-deps` (the ordinary client of the
  package registry; no compiling).
- The binaries are cached outside the repository, in ~/.cache/llmctl-bench/<version>/<key>/<tool>
  ($LLMCTL_BENCH_CACHE instead of ~/.cache/llmctl-bench), where <key> is a hash of the library
  directory and of libllama.so: a binary finds the libraries by an rpath to that directory, so each
  venv (and each rebuild of the wheel) has its own. Written atomically; a cached binary that no
  longer runs is rebuilt.
- build-info: the commit is the one the installed libggml reports (less "-dirty", as llama-bench's
  build-info records a commit), the build number 0 (llama-cpp-python does not expose one), so that
  llama-bench and `llmctl bench` write the same build_commit and build_number.
- llama-server's web UI: upstream's CMake embeds a prebuilt UI (npm, or a download from a Hugging Face
  bucket) into a generated ui.cpp. Offline, it generates that file with an empty asset table, and so
  does this build (`ui_sources()`): the server answers its API and says "no UI"; nothing is downloaded.
- AMX: llmctl loads models without llama.cpp's repacked weights on AMX CPUs (llmctl/llamacompat.py);
  pass llama-bench `--repack 0` there (`llama_bench_repack_args()`) and llama-server `--no-repack`
  (`llama_server_repack_args()`), so both load them alike.

Usage: python benchmarks/llamacpp_build.py [--tool llama-bench|llama-server] [--sdist FILE] [--cache DIR]
(prints the binary's path)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Tool(NamedTuple):
    """One llama.cpp program to build: its sources (paths in vendor/llama.cpp, or glob patterns), the
    trees of the sdist they need, include directories, preprocessor definitions and the shared
    libraries of the installed package it links against. (A NamedTuple, not a dataclass: the tests
    load this file by path, without a sys.modules entry, which dataclasses need.)"""

    name: str
    sources: tuple[str, ...]
    trees: tuple[str, ...]
    includes: tuple[str, ...]
    libs: tuple[str, ...]
    defines: tuple[str, ...] = ()
    ui: bool = False  # llama-server: generate tools/ui's ui.cpp/ui.h (empty asset table)


# What llama-bench needs from the sdist's vendor/llama.cpp (llama-cpp-python 0.3.36, llama.cpp 0c1e570):
# its sources, the common/ files that define what it calls (with --gc-sections the linker drops the
# rest of them: sampling, chat, ... are never linked), and the headers.
LLAMA_BENCH = Tool(
    name="llama-bench",
    sources=(
        "tools/llama-bench/llama-bench.cpp",
        "tools/llama-bench/main.cpp",
        "common/common.cpp",
        "common/log.cpp",
        "common/fit.cpp",
        "common/arg.cpp",
        "common/json.cpp",
        "common/download.cpp",
        "common/hf-cache.cpp",
        "common/speculative.cpp",
        "vendor/cpp-httplib/httplib.cpp",
    ),
    trees=("include", "ggml/include", "src", "common", "tools/llama-bench", "vendor"),
    includes=("include", "ggml/include", "common", "vendor", "vendor/cpp-httplib"),
    libs=("llama", "ggml", "ggml-base"),
)

# llama-server: tools/server (its CMake targets server-context, llama-server-impl and llama-server) and
# what they link: llama-common (every source that common/CMakeLists.txt lists; llguidance.cpp is empty
# without LLAMA_LLGUIDANCE), cpp-httplib with the definitions its CMake target sets, mtmd (shipped by
# the package as libmtmd.so; only its headers here) and llama-ui (generated, empty). LLAMA_SUBPROCESS
# as upstream's default on Linux.
_HTTPLIB_DEFINES = (
    "CPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH=1048576",
    "CPPHTTPLIB_LISTEN_BACKLOG=512",
    "CPPHTTPLIB_REQUEST_URI_MAX_LENGTH=32768",
    "CPPHTTPLIB_TCP_NODELAY=1",
)
LLAMA_SERVER = Tool(
    name="llama-server",
    sources=(
        "tools/server/*.cpp",
        "common/*.cpp",
        "common/jinja/*.cpp",
        "common/parsers/*.cpp",
        "vendor/cpp-httplib/httplib.cpp",
    ),
    trees=(
        "include",
        "ggml/include",
        "src",
        "common",
        "tools/server",
        "tools/mtmd",
        "tools/ui/ui.h.in",
        "tools/ui/ui.cpp.in",
        "vendor",
    ),
    includes=("include", "ggml/include", "common", "vendor", "vendor/cpp-httplib", "tools/server", "tools/mtmd", "."),
    libs=("mtmd", "llama", "ggml", "ggml-base"),
    defines=("LLAMA_SUBPROCESS", *_HTTPLIB_DEFINES),
    ui=True,
)

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
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                tmp,
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
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
            inner = rel[len(_VENDOR_PREFIX) :]
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
    for key, value in (
        ("LLAMA_BUILD_NUMBER", str(number)),
        ("LLAMA_BUILD_COMMIT", commit),
        ("BUILD_COMPILER", compiler),
        ("BUILD_TARGET", f"{platform.system()} {platform.machine()}"),
    ):
        text = text.replace(f"@{key}@", value)
    return text


def ui_sources(src: Path, dest: Path) -> None:
    """tools/ui's ui.h and ui.cpp as scripts/ui-assets.cmake configures them when no UI assets were
    provisioned (offline, no npm): an empty asset table; llama-server then serves its API without a UI."""
    header = (src / "tools" / "ui" / "ui.h.in").read_text()
    header = header.replace("#cmakedefine LLAMA_UI_HAS_ASSETS 1", "/* #undef LLAMA_UI_HAS_ASSETS */")
    cpp = (src / "tools" / "ui" / "ui.cpp.in").read_text()
    values = {"ASSET_ARRAYS": "", "ASSET_TABLE": "", "N_ASSETS": "0", "USE_GZIP": "false"}
    for key, value in values.items():
        header, cpp = header.replace(f"@{key}@", value), cpp.replace(f"@{key}@", value)
    for text, name in ((header, "ui.h"), (cpp, "ui.cpp")):
        if re.search(r"@[A-Z_]+@|#cmakedefine", text):
            raise RuntimeError(f"tools/ui/{name}.in has a placeholder this build does not know: update ui_sources()")
        (dest / name).write_text(text)


def tool_sources(src: Path, tool: Tool) -> list[Path]:
    """The tool's source files, its glob patterns expanded (sorted, so that a build is repeatable)."""
    out: list[Path] = []
    for pattern in tool.sources:
        found = sorted(src.glob(pattern)) if "*" in pattern else [src / pattern]
        if not found or not all(f.is_file() for f in found):
            raise RuntimeError(f"the sdist has no {pattern} (another llama.cpp layout? update {tool.name}'s sources)")
        out += found
    return out


def _compile(cxx: str, src: Path, obj: Path, includes: list[Path], defines: tuple[str, ...] = ()) -> None:
    argv = [
        "nice",
        "-n",
        "10",
        cxx,
        "-std=c++17",
        "-O2",
        "-DNDEBUG",
        "-fPIC",
        "-ffunction-sections",
        "-fdata-sections",
        "-pthread",
        *(f"-D{d}" for d in defines),
        *(f"-I{i}" for i in includes),
        "-c",
        str(src),
        "-o",
        str(obj),
    ]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {src.name} failed:\n{r.stderr[-4000:]}")


def _runs(binary: Path) -> bool:
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def build_tool(
    tool: Tool,
    *,
    sdist: Path | None = None,
    cache: Path | None = None,
    jobs: int | None = None,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """llama.cpp's `tool` linked against the installed llama-cpp-python's libraries; cached."""
    version, lib = installed_llama_cpp()
    for name in tool.libs:
        if not (lib / f"lib{name}.so").exists():
            raise RuntimeError(
                f"no lib{name}.so in {lib}: {tool.name} links against it (this llama-cpp-python was built without it)"
            )
    libllama = (lib / "libllama.so").resolve()
    key = hashlib.sha256(str(lib).encode() + b"\0" + hashlib.sha256(libllama.read_bytes()).digest()).hexdigest()[:12]
    root = _cache_root(cache) / version
    out_dir = root / key
    binary = out_dir / tool.name
    if binary.is_file() and _runs(binary):
        return binary
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError(f"no C++ compiler (c++ or $CXX) to build {tool.name}")
    sdist = sdist or llama_cpp_sdist(version, root, say)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
        work = Path(tmp)
        src = extract_llama_cpp(sdist, work / "llama.cpp", tool.trees)
        compiler = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        commit = installed_ggml_commit().removesuffix("-dirty")
        gen = work / "gen"
        gen.mkdir()
        (gen / "build-info.cpp").write_text(
            build_info_source(src / "common" / "build-info.cpp.in", commit, 0, compiler)
        )
        sources = tool_sources(src, tool) + [gen / "build-info.cpp"]
        if tool.ui:
            ui_sources(src, gen)
            sources.append(gen / "ui.cpp")
        includes = [src / i for i in tool.includes] + [gen]
        objs = [work / f"{i}-{s.stem}.o" for i, s in enumerate(sources)]
        say(f"compiling {tool.name} ({len(sources)} files, llama-cpp-python {version}, commit {commit})")
        with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            futures = [pool.submit(_compile, cxx, s, o, includes, tool.defines) for s, o in zip(sources, objs)]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        tmp_bin = work / tool.name
        r = subprocess.run(
            [
                cxx,
                "-o",
                str(tmp_bin),
                *map(str, objs),
                "-Wl,--gc-sections",
                f"-L{lib}",
                *(f"-l{name}" for name in tool.libs),
                f"-Wl,-rpath,{lib}",
                "-pthread",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"linking {tool.name} failed:\n{r.stderr[-4000:]}")
        if not _runs(tmp_bin):
            raise RuntimeError(f"the {tool.name} just built does not run ({tmp_bin} --version)")
        os.replace(tmp_bin, binary)
    say(f"built {binary}")
    return binary


def build_llama_bench(
    *,
    sdist: Path | None = None,
    cache: Path | None = None,
    jobs: int | None = None,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """llama.cpp's llama-bench linked against the installed llama-cpp-python's libraries; cached."""
    return build_tool(LLAMA_BENCH, sdist=sdist, cache=cache, jobs=jobs, say=say)


def build_llama_server(
    *,
    sdist: Path | None = None,
    cache: Path | None = None,
    jobs: int | None = None,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> Path:
    """llama.cpp's llama-server linked against the installed llama-cpp-python's libraries; cached."""
    return build_tool(LLAMA_SERVER, sdist=sdist, cache=cache, jobs=jobs, say=say)


def llama_bench_repack_args() -> list[str]:
    """llama-bench's flag for the weight buffers llmctl uses on this CPU (off on AMX, see llamacompat)."""
    from llmctl.llamacompat import default_extra_bufts

    return ["--repack", "1" if default_extra_bufts() else "0"]


def llama_server_repack_args() -> list[str]:
    """llama-server's flag for the weight buffers llmctl uses on this CPU (off on AMX, see llamacompat)."""
    from llmctl.llamacompat import default_extra_bufts

    return ["--repack" if default_extra_bufts() else "--no-repack"]


TOOLS = {t.name: t for t in (LLAMA_BENCH, LLAMA_SERVER)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Build llama.cpp's llama-bench or llama-server against the installed llama-cpp-python."
    )
    ap.add_argument("--tool", choices=sorted(TOOLS), default="llama-bench")
    ap.add_argument("--sdist", type=Path, help="llama-cpp-python's sdist (default: downloaded with pip)")
    ap.add_argument("--cache", type=Path, help="where binaries are kept (default: ~/.cache/llmctl-bench)")
    args = ap.parse_args()
    print(build_tool(TOOLS[args.tool], sdist=args.sdist, cache=args.cache))


if __name__ == "__main__":
    main()
