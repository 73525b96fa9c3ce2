"""The container layout, in-process (the image itself is built by /work/shared/tools/container-check):
an unedited config.example.toml mounted at /config/lifecycle.toml syncs, and the Dockerfile, compose file and
constraints agree with each other."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from connector.config import load_config
from connector.pipeline import sync

ROOT = Path(__file__).resolve().parents[1]


def test_unedited_example_config_in_the_image_layout_syncs(tmp_path, monkeypatch):
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ln -s /opt/lifecycle/examples /config/examples" in dockerfile and "COPY examples /opt/lifecycle/examples" in dockerfile
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
