"""Reading, composing and validating the configuration.

Where values come from: the Hydra tree ``conf/`` is the only source. DVC composes it into ``params.yaml``
(``dvc exp run -S dataset=waterbirds -S recipe=paper``; ``make params`` for the defaults) and every stage
reads that file with :func:`load_config`. :func:`compose_config` runs the same composition in-process
(benchmarks, tests, scripts). ``KEY=VALUE`` overrides (``--set`` of the stages, ``overrides=`` here) are
applied last.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hardmask.config.schema import Config
from hardmask.errors import HardmaskError

CONF_DIR = "conf"  # the Hydra tree, relative to the project root (DVC's default hydra.config_dir)
CONF_NAME = "config"  # its defaults list: conf/config.yaml


class ConfigError(HardmaskError, ValueError):
    """A configuration problem, with the file and the dotted key it is about."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; empty mappings and sequences are leaves (lists)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.lr=1e-3"`` -> ``{"optim": {"lr": 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE with a dotted key")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (check its spelling against hardmask/config/schema.py)")
        elif err["type"] == "missing":
            lines.append(
                f"  - {key}: missing (every key needs a value; params.yaml is composed from conf/: "
                "`make params` or `dvc exp run -S ...` writes it whole)"
            )
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {err['msg']}{got_s}")
    return "\n".join(lines)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = dict(data)
    for text in overrides:
        out = deep_merge(out, parse_override(text))
    return out


def load_config(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Config:
    """``params.yaml`` (complete: composed from ``conf/``) with ``KEY=VALUE`` ``overrides``, validated."""
    data = apply_overrides(read_yaml(path), overrides)
    source = str(path) + (f" + {' '.join(overrides)}" if overrides else "")
    return config_from_dict(data, source=source)


def compose(overrides: Sequence[str] = (), conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """The plain dict Hydra composes from ``conf_dir`` with Hydra ``overrides`` (``dataset=cub``,
    ``optim.lr=1e-3``), i.e. what ``dvc exp run -S ...`` writes to ``params.yaml``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{CONF_NAME}.yaml").is_file():
        raise ConfigError(f"{conf_dir}/{CONF_NAME}.yaml: the Hydra config tree is missing")
    try:
        with initialize_config_dir(str(conf_dir), version_base=None):
            cfg = hydra_compose(config_name=CONF_NAME, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{conf_dir}: cannot compose {list(overrides)}: {exc}") from None
    return OmegaConf.to_container(cfg, resolve=True)


def compose_config(overrides: Sequence[str] = (), conf_dir: str | Path = CONF_DIR) -> Config:
    """:func:`compose`, validated."""
    return config_from_dict(compose(overrides, conf_dir), source=f"{conf_dir} + {list(overrides)}")


def save_config(cfg: Config, path: str | Path) -> None:
    from hardmask.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.dump(), sort_keys=False))
