"""Build of arbiter_client: the package plus arbiter_pb2.py, which protoc
generates from the daemon's own proto/arbiter.proto at build time (it is
never committed or edited by hand).

Where the schema is looked up, first found wins:
  $ARBITER_PROTO                 an explicit path to arbiter.proto
  ../../proto/arbiter.proto      the repository (client/python is here)
  proto/arbiter.proto            inside an sdist (copied there by sdist)

$ARBITER_PY_BUILD_BASE, when set, moves setuptools' build folder (default
./build) elsewhere, e.g. under the make BUILD folder.

Needs Debian's protobuf-compiler (protoc), python3-setuptools and
python3-wheel at build time, python3-protobuf at run time.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "arbiter_client"


def find_proto():
    candidates = [os.environ.get("ARBITER_PROTO"),
                  os.path.join(HERE, "..", "..", "proto", "arbiter.proto"),
                  os.path.join(HERE, "proto", "arbiter.proto")]
    for c in candidates:
        if c and os.path.isfile(c):
            return os.path.abspath(c)
    raise SystemExit(
        "arbiter_client build: cannot find arbiter.proto (looked at %s); "
        "build from the arbiter repository or set ARBITER_PROTO" %
        ", ".join(c for c in candidates if c))


def run_protoc(out_dir):
    proto = find_proto()
    protoc = shutil.which("protoc")
    if protoc is None:
        raise SystemExit(
            "arbiter_client build: protoc not found; install Debian's "
            "protobuf-compiler (apt-get install protobuf-compiler)")
    os.makedirs(out_dir, exist_ok=True)
    cmd = [protoc, "--proto_path=" + os.path.dirname(proto),
           "--python_out=" + out_dir, proto]
    print("running", " ".join(cmd))
    subprocess.check_call(cmd)


class BuildPyWithProto(build_py):
    """build_py that also generates arbiter_pb2.py with protoc."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # pip install -e: the package is imported from the source
            # folder, so the module goes there (it is git-ignored).
            run_protoc(os.path.join(HERE, PKG))
        else:
            run_protoc(os.path.join(self.build_lib, PKG))

    def get_outputs(self, include_bytecode=True):
        out = super().get_outputs(include_bytecode)
        gen = os.path.join(self.build_lib, PKG, "arbiter_pb2.py")
        if gen not in out:
            out.append(gen)
        return out


class SdistWithProto(sdist):
    """Put the schema into the sdist so it builds away from the repo."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        dest = os.path.join(base_dir, "proto")
        os.makedirs(dest, exist_ok=True)
        shutil.copy(find_proto(), os.path.join(dest, "arbiter.proto"))


options = {}
if os.environ.get("ARBITER_PY_BUILD_BASE"):
    options["build"] = {"build_base": os.environ["ARBITER_PY_BUILD_BASE"]}

setup(cmdclass={"build_py": BuildPyWithProto, "sdist": SdistWithProto},
      options=options)
