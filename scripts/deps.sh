#!/bin/sh
# Install the Debian packages arbiter needs, only those that are missing.
#
#   sh scripts/deps.sh               what building and running need
#   sh scripts/deps.sh test          that, plus what the test suite needs
#   sh scripts/deps.sh bench         that, plus what `make bench` compares
#                                    against
#   sh scripts/deps.sh --check [test]
#                                    install nothing: name what is missing
#                                    and the command that installs it, and
#                                    fail (what a plain `make` runs)
#
# Everything comes from Debian's archive through apt-get; nothing is
# downloaded from anywhere else. Without root (and without password-less
# sudo) it prints the exact command to run instead, and fails.
set -eu

check=no
set_=build
for a in "$@"; do
	case $a in
	--check) check=yes ;;
	test | build | bench) set_=$a ;;
	*)
		echo "usage: sh scripts/deps.sh [--check] [build|test|bench]" >&2
		exit 2
		;;
	esac
done

BUILD_PKGS="gcc libc6-dev make pkg-config libevent-dev libprotobuf-c-dev protobuf-c-compiler
libmsgpack-dev libinih-dev libjansson-dev libssl-dev uthash-dev protobuf-compiler
python3 python3-protobuf"
TEST_PKGS="libcriterion-dev python3-pytest python3-venv python3-pip
python3-setuptools python3-wheel python3-filelock util-linux procps socat
etcd-server etcd-client
prometheus yamllint python3-yaml systemd valgrind clang-tidy cppcheck strace
clang clang-format libclang-rt-14-dev python3-gdbm python3-plyvel"
BENCH_PKGS="redis-server etcd-server"

want="$BUILD_PKGS"
case "$set_" in
test) want="$want $TEST_PKGS" ;;
bench) want="$want $BENCH_PKGS" ;;
esac

missing=""
for p in $want; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$check" = yes ]; then
	how="make deps"
	[ "$set_" != build ] && how="sh scripts/deps.sh $set_"
	echo "arbiter: missing Debian packages:$missing" >&2
	echo "arbiter: nothing was built. Install them with '$how' (as root or" >&2
	echo "arbiter: with sudo), or run:" >&2
	echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi

echo "arbiter: installing missing Debian packages:$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
	SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
	SUDO="sudo -n"
else
	echo "arbiter: cannot install packages without root. Run:" >&2
	echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Installing a service package must not try to start it (containers, CI).
if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
if ! $SUDO apt-get install -y -q --no-install-recommends $missing </dev/null; then
	$SUDO apt-get update -q </dev/null
	$SUDO apt-get install -y -q --no-install-recommends $missing </dev/null || {
		echo "arbiter: apt-get could not install:$missing" >&2
		echo "arbiter: check the apt sources (Debian 12 'bookworm' main) and run:" >&2
		echo "    apt-get update && apt-get install -y --no-install-recommends$missing" >&2
		exit 1
	}
fi
