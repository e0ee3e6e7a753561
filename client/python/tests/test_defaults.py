"""The Python client and the C side agree on the socket path, and the
generated protobuf module is the daemon's own schema."""
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import arbiter_client as ac
from arbiter_client import arbiter_pb2

from conftest import BUILD, PROTO, REPO, in_child_as

C_PROGRAM = r"""
#include <stdio.h>
#include "defaults.h"
int main(void)
{
	char buf[256];
	arb_default_socket_path(buf, sizeof buf);
	puts(buf);
	return 0;
}
"""


@pytest.fixture(scope="module")
def c_default():
    """A program printing arb_default_socket_path() from proto/defaults.h
    (in a folder other uids can reach)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler to build the defaults.h probe")
    d = tempfile.mkdtemp(prefix="arbpy-defaults-", dir="/tmp")
    os.chmod(d, 0o755)
    src = os.path.join(d, "probe.c")
    with open(src, "w") as f:
        f.write(C_PROGRAM)
    exe = os.path.join(d, "probe")
    subprocess.check_call([cc, "-I", os.path.join(REPO, "proto"), "-o",
                           exe, src])
    yield exe
    shutil.rmtree(d, ignore_errors=True)


def run_as(uid, cmd, env=None):
    kw = {} if uid is None else dict(user=uid, group=uid, extra_groups=[])
    return subprocess.run(cmd, capture_output=True, text=True, check=True,
                          env=env, **kw).stdout.strip()


def test_default_path_matches_defaults_h(c_default):
    assert ac.default_socket_path() == run_as(None, [c_default])
    expected = ("/run/arbiter/arbiter.sock" if os.getuid() == 0 else
                "/tmp/arbiter-%d/arbiter.sock" % os.getuid())
    assert ac.default_socket_path() == expected


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to change uid")
@pytest.mark.parametrize("uid", [1, 65534, 4242])
def test_default_path_matches_defaults_h_for_other_uids(c_default, uid):
    # The C probe is built in /tmp (0755); the Python side runs in a forked
    # child of this process, so nothing is executed from the clone.
    c = run_as(uid, [c_default])
    py = in_child_as(uid, ac.default_socket_path)
    assert c == py == "/tmp/arbiter-%d/arbiter.sock" % uid


C_PATH = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.arb_socket_path.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
buf = ctypes.create_string_buffer(256)
lib.arb_socket_path(buf, 256)
print(buf.value.decode())
"""


def test_socket_path_resolution_matches_libarbiter(monkeypatch):
    lib_path = os.path.join(BUILD, "libarbiter.so")
    if not os.path.exists(lib_path):
        pytest.fail("no %s: build the C side first" % lib_path)
    # A sanitizer build of the library needs its runtime loaded first, so
    # ask the library in a child process that preloads it.
    env = dict(os.environ)
    ldd = subprocess.run(["ldd", lib_path], capture_output=True,
                         text=True).stdout
    for line in ldd.splitlines():
        if "libasan" in line and "=>" in line:
            env["LD_PRELOAD"] = line.split("=>")[1].split()[0]
            env["ASAN_OPTIONS"] = "detect_leaks=0"

    def c_path():
        return subprocess.run([sys.executable, "-c", C_PATH, lib_path],
                              env=env, capture_output=True, text=True,
                              check=True).stdout.strip()
    for value in (None, "", "/srv/x/arbiter.sock"):
        if value is None:
            monkeypatch.delenv("ARBITER_SOCKET", raising=False)
            env.pop("ARBITER_SOCKET", None)
        else:
            monkeypatch.setenv("ARBITER_SOCKET", value)
            env["ARBITER_SOCKET"] = value
        assert ac.resolve_socket_path() == c_path()
    assert ac.resolve_socket_path("/given.sock") == "/given.sock"


def test_generated_module_is_the_current_schema(tmp_path):
    """arbiter_pb2 was generated from this repository's proto (not a stale
    or hand-edited copy)."""
    from google.protobuf import descriptor_pb2
    out = tmp_path / "set.pb"
    subprocess.check_call(["protoc", "--proto_path=" +
                           os.path.dirname(PROTO), "--descriptor_set_out=" +
                           str(out), PROTO])
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    want = fds.file[0]
    for m in want.message_type:              # protoc adds json_name in
        for f in m.field:                    # descriptor sets only
            f.ClearField("json_name")
    mine = descriptor_pb2.FileDescriptorProto()
    mine.ParseFromString(arbiter_pb2.DESCRIPTOR.serialized_pb)
    assert want == mine
    assert ac.PROTOCOL_VERSION == 1
