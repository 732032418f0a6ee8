"""Run one ``stages/<name>.py`` and record what it really used: project modules, files read, config keys read.

``python tests/stage_audit.py <stage.py> <out.json> [stage arguments...]``. Used by tests/test_dvc_deps.py:
the stage runs as DVC would run it, under an audit hook (file opens) and with every config section recording
which of its keys were read; the record is written even when the stage fails.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

opened: set[str] = set()


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not args or not isinstance(args[0], str | bytes | os.PathLike):
        return
    path, mode, flags = (list(args) + [None, None])[:3]
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)
    )
    if not writing:
        opened.add(os.path.abspath(os.fsdecode(path)))


def _record_key_reads() -> set[str]:
    """Make the sections of every config built from the params (not a checkpoint's stored config) note the
    keys read from them, dotted (``optim.lr``); reads made by the schema's own validators do not count."""
    from pydantic import BaseModel

    import hardmask.config
    from hardmask.config import loading, schema

    prefixes: dict[type, str] = {schema.Config: ""}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                prefixes[annotation] = f"{prefix}{name}."
                walk(annotation, f"{prefix}{name}.")

    walk(schema.Config, "")
    reads: set[str] = set()
    tracked: dict[int, BaseModel] = {}  # id -> section (kept alive, so that no id is reused)

    def track(section: BaseModel) -> None:
        tracked[id(section)] = section
        for name in type(section).model_fields:
            value = object.__getattribute__(section, name)
            if isinstance(value, BaseModel):
                track(value)

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        cls = type(self)
        if id(self) in tracked and name in cls.model_fields and not isinstance(value, BaseModel):
            reads.add(prefixes.get(cls, "?.") + name)
        return value

    original = loading.config_from_dict

    def config_from_dict(data, source="<dict>"):
        cfg = original(data, source)
        if "(stored config)" not in source:  # a checkpoint's config is the training run's, not a param
            track(cfg)
        return cfg

    loading.config_from_dict = hardmask.config.config_from_dict = config_from_dict
    schema.Section.__getattribute__ = getattribute
    return reads


def main() -> None:
    stage, out, *argv = sys.argv[1:]
    sys.addaudithook(_audit)
    reads = _record_key_reads()
    sys.argv = [stage, *argv]
    error = None
    try:
        runpy.run_path(stage, run_name="__main__")
    except SystemExit as exc:
        error = None if exc.code in (0, None) else f"exit {exc.code}"
    except BaseException as exc:  # recorded, then re-raised below
        error = f"{type(exc).__name__}: {exc}"
    modules = sorted(
        os.path.abspath(m.__file__) for m in list(sys.modules.values()) if getattr(m, "__file__", None)
    )
    with open(out, "w") as fh:
        json.dump({"modules": modules, "opened": sorted(opened), "keys": sorted(reads), "error": error}, fh)
    if error:
        raise SystemExit(error)


if __name__ == "__main__":
    main()
