"""Does the model engine still work inside the server unit's seccomp sandbox?

systemd is not PID 1 here, so the unit cannot be started. What can be reproduced exactly is its
seccomp part, which is where a hardened unit usually breaks an inference server: this test reads
SystemCallFilter=, MemoryDenyWriteExecute= and RestrictAddressFamilies= from the rendered unit,
expands the syscall groups with the real `systemd-analyze syscall-filter`, loads the same filters
systemd would (one per setting, through libseccomp, with NoNewPrivileges), and then loads the smoke
model with llama-cpp-python, generates, and serves a request on 127.0.0.1 with asyncio.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmctl.config import validate
from llmctl.units.render import RenderOptions, render

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")

SECCOMP_PRELUDE = r"""
import ctypes, ctypes.util, errno, json, os, socket, sys

spec = json.loads(sys.argv[1])
lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]

class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                       ctypes.POINTER(Cmp)]
ALLOW = 0x7FFF0000
def ERRNO(e): return 0x00050000 | e
EQ, MASKED_EQ = 4, 7

def nr(name):
    n = lib.seccomp_syscall_resolve_name(name.encode())
    return None if n < 0 else n

def rule(ctx, action, name, *cmps):
    n = nr(name)
    if n is None:
        return
    arr = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
    rc = lib.seccomp_rule_add_array(ctx, action, n, len(cmps), arr)
    assert rc == 0, (name, rc)

def load(ctx):
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)

libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS

# MemoryDenyWriteExecute=yes: systemd's rules
if spec["mdwe"]:
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
    ctx = lib.seccomp_init(ALLOW)
    rule(ctx, ERRNO(errno.EPERM), "mmap", (2, MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    rule(ctx, ERRNO(errno.EPERM), "mprotect", (2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, ERRNO(errno.EPERM), "pkey_mprotect", (2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, ERRNO(errno.EPERM), "shmat", (2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
    load(ctx)
# RestrictAddressFamilies=
ctx = lib.seccomp_init(ALLOW)
for family in range(1, 46):
    if family not in spec["families"]:
        rule(ctx, ERRNO(errno.EAFNOSUPPORT), "socket", (0, EQ, family, 0))
load(ctx)

# SystemCallFilter= (allow-list) with SystemCallErrorNumber=EPERM; last, as systemd does
ctx = lib.seccomp_init(ERRNO(errno.EPERM))
for name in spec["allow"]:
    rule(ctx, ALLOW, name)
load(ctx)

"""

CHILD = (
    SECCOMP_PRELUDE
    + r"""
result = {}
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    result["wx_mapping"] = "allowed"
except OSError as exc:
    result["wx_mapping"] = errno.errorcode[exc.errno]
try:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    result["inet6"] = "allowed"
except OSError as exc:
    result["inet6"] = errno.errorcode[exc.errno]
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
    result["netlink"] = "allowed"
except OSError as exc:
    result["netlink"] = errno.errorcode[exc.errno]
try:
    os.chown(sys.argv[3], 0, 0)  # @privileged (@chown) is filtered out
    result["chown"] = "allowed"
except OSError as exc:
    result["chown"] = errno.errorcode[exc.errno]

import llama_cpp.llama_cpp as _lc
_defaults = _lc.llama_model_default_params
def _no_extra_bufts():
    # The AMX extra buffer type crashes in ggml_backend_amx_mul_mat on the test VMs (with or without
    # any sandbox); the plain CPU path is what this test is about.
    params = _defaults()
    params.use_extra_bufts = False
    return params
_lc.llama_model_default_params = _no_extra_bufts
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[2], n_ctx=256, n_threads=2, verbose=False)
out = llm("The capital of France is", max_tokens=4, temperature=0)
result["tokens"] = out["usage"]["completion_tokens"]

import asyncio
async def main():
    async def handle(reader, writer):
        await reader.readline()
        writer.write(b"pong\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    server.close()
    await server.wait_closed()
    return line.decode().strip()
result["http"] = asyncio.run(main())
# sd_notify's datagram socket
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC).close()
print(json.dumps(result))
"""
)


def _groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def _expand(item: str, groups: dict[str, list[str]]) -> set[str]:
    if not item.startswith("@"):
        return {item}
    names: set[str] = set()
    for entry in groups[item]:
        names |= _expand(entry, groups)
    return names


def _policy(unit: str) -> dict:
    groups = _groups()
    allow: set[str] = set()
    for line in unit.splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            deny = value.startswith("~")
            items = value.lstrip("~").split()
            names = set().union(*(_expand(i, groups) for i in items))
            allow = allow - names if deny else allow | names
    allow |= _expand("@default", groups)  # systemd always permits @default with an allow-list
    families = []
    for line in unit.splitlines():
        if line.startswith("RestrictAddressFamilies="):
            import socket

            families = [int(getattr(socket, f)) for f in line.split("=", 1)[1].split()]
    return {"allow": sorted(allow), "families": families, "mdwe": "MemoryDenyWriteExecute=yes" in unit}


@pytest.mark.model
def test_engine_runs_under_the_server_units_seccomp_policy(smoke_model: Path, tmp_path: Path):
    pytest.importorskip("llama_cpp", reason="needs llmctl[serve]")
    config = validate({"services": {"chat": {"model": "smoke"}}})
    unit = (
        render(config, RenderOptions(llmctl="/usr/bin/llmctl", config_path="/etc/llmctl/config.yaml"))
        .get("llmctl-chat.service")
        .content
    )
    policy = _policy(unit)
    assert policy["mdwe"] and policy["families"]
    assert "mount" not in policy["allow"] and "setrlimit" not in policy["allow"]  # ~@privileged @resources
    victim = tmp_path / "owned-by-me"
    victim.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(policy), str(smoke_model), str(victim)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The sandbox is in force ...
    assert result["wx_mapping"] == "EPERM"
    assert result["inet6"] == "EAFNOSUPPORT" and result["netlink"] == "EAFNOSUPPORT"
    assert result["chown"] == "EPERM"
    # ... and the engine and the network still work inside it.
    assert result["tokens"] >= 1
    assert result["http"] == "pong"


LEDGER_CHILD = (
    SECCOMP_PRELUDE
    + r"""
import time
from pathlib import Path
from llmctl.usage.ledger import Ledger
from llmctl.usage.report import summarize

state = Path(sys.argv[2])
ledger = Ledger(state / "usage.db")
for i in range(50):
    ledger.record({"ts": time.time(), "route": "local", "model": "smoke", "status": 200, "prompt_tokens": 3})
written = ledger.flush(10)
report = summarize(state, since=None, by=None)  # read while the writer runs: WAL, -shm mapped
ledger.close()
print(json.dumps({"flushed": written, "written": ledger.written, "dropped": ledger.dropped,
                  "error": ledger.last_error, "read": report.total.requests, "prompt": report.total.prompt_tokens}))
"""
)


def test_usage_ledger_works_under_the_server_units_seccomp_policy(tmp_path: Path):
    """The one thing the server unit writes (its StateDirectory=): SQLite in WAL mode maps the -shm
    file shared, takes fcntl locks and syncs; all of it must pass the unit's filters."""
    config = validate({"services": {"chat": {"model": "smoke"}}})
    unit = (
        render(config, RenderOptions(llmctl="/usr/bin/llmctl", config_path="/etc/llmctl/config.yaml"))
        .get("llmctl-chat.service")
        .content
    )
    assert "StateDirectory=llmctl/serve" in unit
    state = tmp_path / "serve"
    state.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, "-c", LEDGER_CHILD, json.dumps(_policy(unit)), str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"flushed": True, "written": 50, "dropped": 0, "error": None, "read": 50, "prompt": 150}


# A CUDA workload through the driver API (what llama.cpp's CUDA backend rests on): context, PTX JIT,
# memory, a kernel launch, a copy back.
GPU_CHILD = (
    SECCOMP_PRELUDE
    + r'''
PTX = b"""
.version 7.0
.target sm_50
.address_size 64
.visible .entry add_one(.param .u64 p, .param .u32 n)
{
    .reg .pred %p<2>; .reg .b32 %r<6>; .reg .b64 %rd<5>; .reg .f32 %f<3>;
    ld.param.u64 %rd1, [p]; ld.param.u32 %r2, [n];
    mov.u32 %r3, %ctaid.x; mov.u32 %r4, %ntid.x; mov.u32 %r5, %tid.x;
    mad.lo.s32 %r1, %r3, %r4, %r5;
    setp.ge.u32 %p1, %r1, %r2;
    @%p1 bra DONE;
    cvta.to.global.u64 %rd2, %rd1; mul.wide.u32 %rd3, %r1, 4; add.s64 %rd4, %rd2, %rd3;
    ld.global.f32 %f1, [%rd4]; add.f32 %f2, %f1, 0f3F800000; st.global.f32 [%rd4], %f2;
DONE:
    ret;
}
"""
cuda = ctypes.CDLL("libcuda.so.1")
def ck(rc, what):
    if rc != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        raise SystemExit(f"{what}: CUDA error {rc} {name.value}")
ck(cuda.cuInit(0), "cuInit")
dev = ctypes.c_int()
ck(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ctx = ctypes.c_void_p()
ck(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
mod = ctypes.c_void_p()
ck(cuda.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX)), "cuModuleLoadData (PTX JIT)")
fn = ctypes.c_void_p()
ck(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"add_one"), "cuModuleGetFunction")
n = 1024
host = (ctypes.c_float * n)(*range(n))
dptr = ctypes.c_uint64()
ck(cuda.cuMemAlloc_v2(ctypes.byref(dptr), n * 4), "cuMemAlloc")
ck(cuda.cuMemcpyHtoD_v2(dptr, host, n * 4), "cuMemcpyHtoD")
arg_p, arg_n = ctypes.c_uint64(dptr.value), ctypes.c_uint32(n)
args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(arg_p), ctypes.c_void_p),
                             ctypes.cast(ctypes.byref(arg_n), ctypes.c_void_p))
ck(cuda.cuLaunchKernel(fn, 4, 1, 1, 256, 1, 1, 0, None, args, None), "cuLaunchKernel")
ck(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
out = (ctypes.c_float * n)()
ck(cuda.cuMemcpyDtoH_v2(out, dptr, n * 4), "cuMemcpyDtoH")
assert all(out[i] == i + 1 for i in range(n)), "wrong result"
try:
    mmap_ok = __import__("mmap").mmap(-1, 4096, prot=7) and "allowed"
except OSError as exc:
    mmap_ok = errno.errorcode[exc.errno]
print(json.dumps({"cuda": "ok", "wx_mapping": mmap_ok}))
'''
)


def _has_cuda() -> bool:
    import ctypes

    if not Path("/dev/nvidiactl").exists():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def gpu_policy() -> dict:
    config = validate({"services": {"g": {"model": "smoke", "n_gpu_layers": -1}}})
    unit = (
        render(config, RenderOptions(llmctl="/usr/bin/llmctl", config_path="/etc/llmctl/config.yaml"))
        .get("llmctl-g.service")
        .content
    )
    return _policy(unit)


@pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU and libcuda")
def test_cuda_runs_under_the_gpu_units_seccomp_policy():
    policy = gpu_policy()
    assert policy["mdwe"]
    proc = subprocess.run(
        [sys.executable, "-c", GPU_CHILD, json.dumps(policy)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"cuda": "ok", "wx_mapping": "EPERM"}
