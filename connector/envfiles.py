"""Secrets from files, and configuration from the environment alone (containers, Docker secrets).

* ``LIFECYCLE_<KEY>_FILE=/run/secrets/name``: the file's content (one trailing newline stripped) becomes
  ``LIFECYCLE_<KEY>``, for every key, e.g. ``LIFECYCLE_CRM__WEBHOOK_URL_FILE``; the ``_FILE`` variable
  is then removed from this process's environment. Setting both the variable and its ``_FILE`` (with
  different values) is an error (which one wins would be a guess), and so is a file that cannot be
  read or is empty. :func:`expand_secret_files` runs before the settings are read.
* Where the configuration comes from when ``--config`` is not given (:func:`config_source`): the file
  named by ``LIFECYCLE_CONFIG``; else ``./lifecycle.toml`` if it exists; else the environment alone when
  ``LIFECYCLE_CRM__KIND`` is set; else an error saying what to set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

PREFIX = "LIFECYCLE_"
SUFFIX = "_FILE"
CONFIG_VAR = "LIFECYCLE_CONFIG"
KIND_VAR = "LIFECYCLE_CRM__KIND"
DEFAULT_FILE = "lifecycle.toml"
NOT_KEYS = {CONFIG_VAR}
ENV_ONLY = Path("(environment)")  # LoadedConfig.path and the label of errors when no file is read  # LIFECYCLE_ variables that are not settings


class EnvFileError(Exception):
    """A ``LIFECYCLE_..._FILE`` variable cannot be used; the message names it and what to fix."""


def expand_secret_files(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set ``LIFECYCLE_X`` from the file named by ``LIFECYCLE_X_FILE``; return the variables set.

    The file's content is never part of an error message."""
    env = os.environ if environ is None else environ
    done: list[str] = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(PREFIX) or not upper.endswith(SUFFIX) or upper in NOT_KEYS:
            continue
        target = name[: -len(SUFFIX)]
        if len(target) <= len(PREFIX):
            continue
        if target.upper() == CONFIG_VAR:
            raise EnvFileError(f"{name}: name the config file with {CONFIG_VAR}=PATH (there is no {name})")
        path = Path(env[name])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EnvFileError(f"{name}: file {path} not found (a Docker secret is mounted under /run/secrets/)") from None
        except IsADirectoryError:
            raise EnvFileError(f"{name}: {path} is a folder; name the file holding the value") from None
        except PermissionError:
            raise EnvFileError(f"{name}: cannot read {path} (permission denied for this user)") from None
        except UnicodeDecodeError:
            raise EnvFileError(f"{name}: {path} is not UTF-8 text") from None
        except OSError as exc:
            raise EnvFileError(f"{name}: cannot read {path}: {exc.strerror}") from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        if not text.strip():
            raise EnvFileError(f"{name}: {path} is empty")
        other = next((k for k in env if k != name and k.upper() == target.upper()), None)
        if other is not None:
            if env[other] == text:
                continue  # already expanded (an earlier load in this process)
            raise EnvFileError(f"{name} and {other} are both set; keep one of them")
        env[target] = text
        del env[name]  # the settings would read LIFECYCLE_CRM__X_FILE as an unknown key x_file
        done.append(target)
    return done


def configured_by_environment(environ: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(k.upper() == KIND_VAR for k in env)


NOTHING_CONFIGURED = (
    "no configuration: set LIFECYCLE_CRM__KIND (csv, bitrix24 or amocrm) and that CRM's keys as environment "
    "variables (secrets also as LIFECYCLE_..._FILE=/run/secrets/...), or give a TOML file with --config FILE or "
    "LIFECYCLE_CONFIG=FILE (see config.example.toml)"
)


def config_source(explicit: str | Path | None, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """The config file to read, or None for the environment alone. Raises EnvFileError when neither."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return Path(explicit)
    named = next((v for k, v in env.items() if k.upper() == CONFIG_VAR and v), None)
    if named:
        return Path(named)
    if Path(DEFAULT_FILE).is_file():
        return Path(DEFAULT_FILE)
    if configured_by_environment(env):
        return None
    raise EnvFileError(NOTHING_CONFIGURED)
