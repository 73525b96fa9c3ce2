"""The container layout, in-process (the image itself is built by /work/shared/tools/container-check):
an unedited config.example.toml mounted at /config/lifecycle.toml syncs, and the Dockerfile, compose file and
constraints agree with each other; scripts/image-rootfs.sh (the production image's root file system, FROM
scratch) assembles a tree in which Python runs with TLS, time zones and SQLite, as uid 10001, with no shell."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import yaml

from connector.config import load_config
from connector.pipeline import sync

ROOT = Path(__file__).resolve().parents[1]


def test_unedited_example_config_in_the_image_layout_syncs(tmp_path, monkeypatch):
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    # the link is made in the builder's /rootfs, which becomes the image's / (FROM scratch)
    assert "ln -s /opt/lifecycle/examples /rootfs/config/examples" in dockerfile
    assert "COPY examples /opt/lifecycle/examples" in dockerfile
    assert re.search(r"^WORKDIR /config$", dockerfile, re.M) and 'CMD ["lifecycle", "run"]' in dockerfile
    compose = yaml.safe_load((ROOT / "docker-compose.example.yml").read_text(encoding="utf-8"))
    connector = compose["services"]["connector"]
    assert "./lifecycle.toml:/config/lifecycle.toml:ro" in connector["volumes"]
    assert connector["restart"].startswith("on-failure:")  # a config error (exit 2) must not loop forever
    # /opt/lifecycle/examples and /config/examples -> it, with the unedited example mounted in /config
    opt = tmp_path / "opt" / "lifecycle"
    opt.mkdir(parents=True)
    (opt / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "examples").symlink_to(opt / "examples", target_is_directory=True)
    (config_dir / "lifecycle.toml").write_bytes((ROOT / "config.example.toml").read_bytes())
    monkeypatch.chdir(config_dir)
    for key in [k for k in os.environ if k.upper().startswith("LIFECYCLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIFECYCLE_STATE__URL", f"sqlite:///{tmp_path / 'data' / 'lifecycle.db'}")  # the image's ENV
    (tmp_path / "data").mkdir()
    config = load_config(None)  # `lifecycle run` with no --config, in WORKDIR /config
    assert config.path == (config_dir / "lifecycle.toml").resolve()
    result = sync(config)
    assert result.summary()["customers"] > 0 and result.summary()["rows_skipped"] == 0


def test_constraints_pin_every_runtime_dependency():
    import tomllib

    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["demo"]
    for requirement in wanted:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]).lower()
        assert name in pins, f"constraints.txt does not pin {name}"


def _stages(dockerfile: str) -> list[tuple[str, str, list[str]]]:
    """(base, name, instruction lines) per FROM, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", line, re.I)
        if match:
            stages.append((match.group(1), match.group(2) or "", []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def test_dockerfile_production_is_from_scratch_with_exec_form_commands():
    stages = _stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    by_name = {name: (base, lines) for base, name, lines in stages}
    # one builder (EXTRAS names the extras: demo, fast), no second copy of it for the demo
    builders = [name for base, name, _ in stages if base.startswith("python:")]
    assert builders == ["builder"], builders
    assert "ARG EXTRAS=\"\"" in by_name["builder"][1]
    assert any("scripts/image-rootfs.sh /opt/venv /rootfs" in line for line in by_name["builder"][1])
    # production is the last stage (what `docker build .` gives) and, like demo, is the scratch runtime
    assert stages[-1][1] == "production"
    assert by_name["runtime"][0] == "scratch"
    assert by_name["production"][0] == by_name["demo"][0] == "runtime"
    assert 'CMD ["lifecycle", "run"]' in by_name["production"][1] and 'CMD ["lifecycle", "demo"]' in by_name["demo"][1]
    # no shell in the image: nothing after FROM scratch may need one
    for name in ("runtime", "demo", "production"):
        for line in by_name[name][1]:
            keyword = line.split()[0].upper()
            assert keyword != "RUN", f"{name}: {line}"
            if keyword in ("CMD", "ENTRYPOINT"):
                assert json.loads(line.split(None, 1)[1])[0] != "/bin/sh", line
            if keyword == "HEALTHCHECK":
                assert json.loads(line.split(" CMD ", 1)[1])[0] == "python", line
    runtime = by_name["runtime"][1]
    assert "USER 10001:10001" in runtime  # numeric: Kubernetes' runAsNonRoot can check it
    assert any(re.match(r"COPY --from=builder --chown=10001:10001 \S+ /data$", line) for line in runtime)
    assert 'VOLUME ["/data"]' in runtime and "LIFECYCLE_STATE__URL=sqlite:////data/lifecycle.db" in " ".join(runtime)


def _base_pythons() -> list[str]:
    """The interpreters here to build a tree from: this one's base (pyenv or /usr/local: libpython shared)
    and Debian's /usr/bin/python3.11 (the stand-in base of container-check), when present."""
    found = []
    for exe in (getattr(sys, "_base_executable", sys.executable), "/usr/bin/python3.11"):
        real = os.path.realpath(exe)
        if os.path.exists(real) and real not in found:
            found.append(real)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("ldd")
                    or not shutil.which("chroot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"),
                    reason="image-rootfs.sh checks its tree with chroot (root, Linux, ldd)")
@pytest.mark.parametrize("base_python", _base_pythons())
def test_image_rootfs_runs_python_with_tls_zoneinfo_sqlite_as_uid_10001(tmp_path, base_python):
    venv = tmp_path / "venv"
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    dest = tmp_path / "rootfs"
    env = {**os.environ, "IMAGE_ROOTFS_IMPORTS": "json, asyncio, email.mime.text, logging.handlers"}
    run = subprocess.run(["sh", str(ROOT / "scripts" / "image-rootfs.sh"), str(venv), str(dest)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    probe = """
import json, os, pwd, sqlite3, ssl, stat, sys, zoneinfo
from datetime import datetime
ctx = ssl.create_default_context()
print(json.dumps({
    "uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name, "prefix": sys.prefix,
    "ca": ctx.cert_store_stats()["x509_ca"],
    "msk": datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Moscow")).utcoffset().total_seconds(),
    "sqlite": sqlite3.connect(":memory:").execute("select 40 + 2").fetchone()[0],
    "tmp": stat.S_IMODE(os.stat("/tmp").st_mode),
}))
"""
    chroot = shutil.which("chroot", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    out = subprocess.run([chroot, "--userspec=10001:10001", str(dest), f"{venv}/bin/python", "-I", "-c", probe],
                         capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["uid"] == 10001 and facts["user"] == "lifecycle" and facts["prefix"] == str(venv)
    assert facts["ca"] > 0 and facts["msk"] == 3 * 3600 and facts["sqlite"] == 42 and facts["tmp"] == 0o1777
    # what a server never imports is left out, and there is no shell or package manager
    stdlib = dest / Path(subprocess.run([f"{venv}/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip()).relative_to("/")
    assert (stdlib / "os.py").is_file() and (stdlib / "json").is_dir()
    for gone in ("test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "site-packages"):
        assert not (stdlib / gone).exists(), gone
    assert not list(stdlib.rglob("__pycache__"))
    for tool in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/apt-get", "usr/bin/dpkg", "usr/bin/ldd"):
        assert not (dest / tool).exists(), tool
    passwd = (dest / "etc" / "passwd").read_text(encoding="utf-8")
    assert "lifecycle:x:10001:10001:" in passwd and passwd.count("\n") == 2
