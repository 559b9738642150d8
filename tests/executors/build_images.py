"""Build the contract-test executor images from root file systems made here (no registry can be reached).

- ``ymir-test/contract:<hash>``: busybox-static and ``contract/start.sh`` (a shell executor).
- ``ymir-test/sdk:<hash>``: Debian's python3 (+ yaml, pydantic 1) unpacked from .deb files, YMIR's SDK
  (``ymir_exc``, pure Python, copied from this environment) and ``sdk/run.py``.

Prints the two references. Idempotent: an image whose tag (the hash of its sources) exists is kept.
Usage: python tests/executors/build_images.py [--podman podman]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY_PACKAGES = ["python3-minimal", "python3-yaml", "python3-pydantic"]
SKIP = (
    "perl",
    "libperl",
    "dpkg_",
    "debconf",
    "install-info",
    "tar_",
    "libdb5",
    "libgdbm",
    "media-types",
    "readline-common",
    "libncurses",
    "libreadline",
    "libtinfo",
)


def _hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for root in paths:
        for path in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(HERE)).encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _exists(podman: str, ref: str) -> bool:
    return subprocess.run([podman, "image", "exists", ref], check=False).returncode == 0


def _busybox(root: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    for folder in ("usr/bin", "tmp", "etc", "in", "out", "proc", "dev"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nexecutor:x:1000:1000::/tmp:/bin/sh\n")


def _import(podman: str, root: Path, ref: str, cmd: str) -> None:
    tar = root.parent / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    subprocess.run(
        [podman, "import", "--quiet", "--change", f"CMD {cmd}", str(tar), ref], check=True, stdout=subprocess.DEVNULL
    )


def build_contract(podman: str) -> str:
    ref = f"ymir-test/contract:{_hash(HERE / 'contract')}"
    if _exists(podman, ref):
        return ref
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        _busybox(root)
        shutil.copy2(HERE / "contract" / "start.sh", root / "usr" / "bin" / "start.sh")
        shutil.copytree(HERE / "contract" / "img-man", root / "img-man")
        _import(podman, root, ref, '["/bin/sh", "/usr/bin/start.sh"]')
    return ref


def build_sdk(podman: str) -> str:
    import ymir_exc

    ref = f"ymir-test/sdk:{_hash(HERE / 'sdk')}"
    if _exists(podman, ref):
        return ref
    with tempfile.TemporaryDirectory() as tmp:
        debs, root = Path(tmp) / "debs", Path(tmp) / "root"
        debs.mkdir()
        names = subprocess.run(
            [
                "apt-cache",
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                "--no-pre-depends",
                *PY_PACKAGES,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        wanted = sorted({n for n in names if n[0].isalnum() and ":" not in n and "<" not in n})
        download = subprocess.run(["apt-get", "download", *wanted], cwd=debs, capture_output=True, text=True)
        if download.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "download", *wanted], cwd=debs, check=True, stdout=subprocess.DEVNULL)
        for deb in sorted(debs.glob("*.deb")):
            if not deb.name.startswith(SKIP):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        _busybox(root)
        site = root / "usr" / "lib" / "python3" / "dist-packages"
        shutil.copytree(Path(ymir_exc.__file__).parent, site / "ymir_exc", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "app").mkdir()
        shutil.copy2(HERE / "sdk" / "run.py", root / "app" / "run.py")
        shutil.copytree(HERE / "sdk" / "img-man", root / "img-man")
        _import(podman, root, ref, '["/usr/bin/python3", "/app/run.py"]')
    return ref


if __name__ == "__main__":
    tool = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--podman" else os.environ.get("PODMAN", "podman")
    print(build_contract(tool))
    print(build_sdk(tool))
