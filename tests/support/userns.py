"""Root inside an unprivileged user namespace, so the real-kernel tests run for an ordinary user.

Owns moving the test process (still single-threaded, from ``pytest_configure``) into a new user
namespace where its own uid is mapped to root, with a new network namespace (loopback up) and a new
mount namespace (a tmpfs on /run, so ``ip netns`` can keep its namespaces in /run/netns). Every
namespace, TUN device, veth, raw socket and nftables table the tests then create is a real kernel
object owned by that user namespace; nothing on the host changes, and all of it goes away with the
process. ``IPSEC_TEST_USERNS=0`` leaves the process as it is (the real-kernel tests then skip).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["OPT_OUT", "enter_user_namespace", "entered", "in_user_namespace", "uid_mapped"]

OPT_OUT = "IPSEC_TEST_USERNS"  # "0": stay an ordinary user
CLONE_NEWNS = 0x00020000  # linux/sched.h
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000  # linux/mount.h
MS_PRIVATE = 1 << 18
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MNT_DETACH = 2
TMPDIR = "/tmp-userns"  # the session's TMPDIR: on its own root, which only it can write to
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # asm/unistd_64.h, asm-generic/unistd.h

entered: str | None = None  # what enter_user_namespace did, for the session header


def in_user_namespace() -> bool:
    """Whether this process runs in a user namespace other than the host's (uid 0 is then not real root)."""
    return _uid_map() != [(0, 0, 4294967295)]


def uid_mapped(uid: int) -> bool:
    """Whether `uid` exists in this process's user namespace (chown(2) and setuid(2) to others fail)."""
    return any(inside <= uid < inside + count for inside, _, count in _uid_map())


def _uid_map() -> list[tuple[int, int, int]]:
    try:
        lines = Path("/proc/self/uid_map").read_text().splitlines()
    except OSError:
        return [(0, 0, 4294967295)]
    return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in lines if line.strip())]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def enter_user_namespace() -> str | None:
    """Become root of a new user, network and mount namespace; None on success, else why not.

    Does nothing (and says why) for root, on ``IPSEC_TEST_USERNS=0``, or where the kernel refuses
    unprivileged user namespaces; the process is left unchanged then.
    """
    global entered
    if os.geteuid() == 0:
        return "already root"
    if os.environ.get(OPT_OUT, "1") == "0":
        return f"{OPT_OUT}=0"
    if not sys.platform.startswith("linux"):
        return "user namespaces are Linux only"
    if os.uname().machine not in SYS_PIVOT_ROOT:
        return f"pivot_root's syscall number on {os.uname().machine} is not known here"
    if _threads() != 1:
        return "the test process already runs several threads (unshare(CLONE_NEWUSER) needs one)"
    uid, gid = os.geteuid(), os.getegid()
    user = pwd.getpwuid(uid).pw_name
    subuid, subgid = _subids("/etc/subuid", user, uid), _subids("/etc/subgid", user, uid)
    if shutil.which("newuidmap") is None or shutil.which("newgidmap") is None:
        return "needs newuidmap and newgidmap (apt-get install uidmap) for a user namespace"
    if subuid is None or subgid is None:
        return f"needs a range for {user} in /etc/subuid and /etc/subgid (usermod --add-subuids)"
    libc = _libc()
    # newuidmap must run outside the new namespace: a child forked before it writes the parent's maps
    ready, go = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only runs the two setuid helpers
        os.close(go)
        status = 1
        if os.read(ready, 1) == b"u":
            status = _write_maps(parent, uid, gid, subuid, subgid)
        os._exit(status)
    os.close(ready)
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        os.close(go)
        os.waitpid(child, 0)
        return f"unprivileged user namespaces are not available here: unshare: {os.strerror(err)}"
    os.write(go, b"u")
    os.close(go)
    _, status = os.waitpid(child, 0)
    # The process is now in the new user namespace; a failure below leaves it half set up: raise.
    if status != 0:
        raise OSError(f"newuidmap/newgidmap failed for pid {parent} (status {status})")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.setgroups([])
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare(CLONE_NEWNS | CLONE_NEWNET)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _new_root(libc)
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass  # without iproute2 the namespace tests skip anyway; loopback stays down
    tempfile.tempdir = None  # TMPDIR changed
    entered = (
        f"uid {uid} is root of a private user, network and mount namespace ({OPT_OUT}=0: stay uid {uid})"
    )
    return None


def _mount_tmpfs(libc: ctypes.CDLL, where: str, mode: str) -> None:
    _check(
        libc.mount(b"tmpfs", where.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}".encode()), where
    )


def _new_root(libc: ctypes.CDLL) -> None:
    """Pivot into a root directory this namespace owns, with the host's top-level directories bound in.

    The host's root-owned directories show up as owned by the overflow uid here, and ipsecd refuses a
    state or pid directory below one (daemon/paths.py): so / is a tmpfs of our own, /run a fresh tmpfs
    (with /run/netns for ``ip netns``) and TMPDIR /tmp-userns, a directory of that root. The rest
    (/usr, /etc, /home, /tmp, /proc, /sys, /dev ...) is the host's, bound in unchanged.
    """
    cwd = os.getcwd()
    _mount_tmpfs(libc, "/run", "0755")  # hides the host's /run from this mount namespace only
    root = "/run/root"
    os.mkdir(root)
    _mount_tmpfs(libc, root, "0755")
    for name in os.listdir("/"):
        if name in ("run", "lost+found"):
            continue
        source, target = "/" + name, f"{root}/{name}"
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
            continue
        if os.path.isdir(source):
            os.mkdir(target)
        else:
            open(target, "x").close()  # a mount point for a file
        if libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
            os.rmdir(target) if os.path.isdir(target) else os.unlink(target)
        elif name in ("sys", "proc"):
            # `ip netns exec` unmounts /sys to mount the namespace's own; a fresh sysfs (or proc) may be
            # mounted only while another stays visible: this second bind on top is what it unmounts
            libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None)
    os.mkdir(f"{root}/run")
    _mount_tmpfs(libc, f"{root}/run", "0755")
    os.mkdir(f"{root}/run/.old")
    _check(
        libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], root.encode(), f"{root}/run/.old".encode()),
        "pivot_root",
    )
    os.chdir("/")
    _check(libc.umount2(b"/run/.old", MNT_DETACH), "umount the old root")
    os.rmdir("/run/.old")
    os.mkdir("/run/netns", 0o755)
    os.mkdir(TMPDIR, 0o1777)  # on the new root's tmpfs, not under /run: charon's harness wants its own /run
    os.chmod(TMPDIR, 0o1777)
    os.environ["TMPDIR"] = TMPDIR
    os.chdir(cwd)


def _subids(path: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first subordinate id range (start, count) of `user` in /etc/subuid or /etc/subgid."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def _write_maps(pid: int, uid: int, gid: int, subuid: tuple[int, int], subgid: tuple[int, int]) -> int:
    """Map root to the user and 1.. to its subordinate range (ids 1 to 65535 cover system users such as
    tcpdump's and nobody); 0 on success."""
    for tool, own, (start, count) in (("newuidmap", uid, subuid), ("newgidmap", gid, subgid)):
        argv = [tool, str(pid), "0", str(own), "1", "1", str(start), str(min(count, 65535))]
        if subprocess.run(argv, check=False, timeout=30).returncode != 0:
            return 1
    return 0
