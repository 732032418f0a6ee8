"""The configuration: one source of values (conf/ -> params.yaml), one schema, clear errors."""

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from hardmask.config import (
    Config,
    ConfigError,
    compose,
    compose_config,
    load_config,
    parse_override,
    run_stage,
    stage_cli,
)
from hardmask.config.cli import write_params

from .conftest import REPO, leaf_values, schema_keys

CONF = REPO / "conf"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_yaml_is_the_composition_of_conf_byte_for_byte(tmp_path):
    """The committed params.yaml is what `dvc exp run -S ...` (and `make params`) would write: no hand edits,
    no drift between conf/ and the file the stages read."""
    written = tmp_path / "params.yaml"
    write_params([], written, conf_dir=str(CONF))
    assert written.read_text() == (REPO / "params.yaml").read_text(), "run `make params` and commit it"


def test_every_schema_key_has_exactly_one_value_in_params_yaml():
    schema = schema_keys()
    on_disk = set(leaf_values(yaml.safe_load((REPO / "params.yaml").read_text())))
    assert on_disk == schema, {"missing": schema - on_disk, "unknown": on_disk - schema}


def test_the_schema_holds_no_values():
    """One source of values: a schema default would be a second one, silently used where conf/ lacks a key."""

    def defaults(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            if not field.is_required():
                found.append(f"{prefix}{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += defaults(annotation, f"{prefix}{name}.")
        return found

    assert defaults(Config) == []


@pytest.mark.parametrize("group", ["dataset", "recipe", "cluster"])
def test_every_option_of_every_group_composes_into_a_valid_config(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        cfg = compose_config([f"{group}={option}"], conf_dir=CONF)
        assert isinstance(cfg, Config)


def test_a_missing_key_is_named(tmp_path):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    del data["optim"]["lr"]
    with pytest.raises(ConfigError, match=r"optim\.lr: missing .*make params"):
        load_config(_write(tmp_path, data))


def test_unknown_key_names_the_key(tmp_path):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["optim"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="optim.lrr"):
        compose(["optim.lrr=0.1"], conf_dir=CONF)  # Hydra refuses it too, before DVC writes anything


def test_wrong_type_and_range_name_the_key(tmp_path):
    params = REPO / "params.yaml"
    with pytest.raises(ConfigError, match=r"data\.loader\.batch_size"):
        load_config(params, overrides=["data.loader.batch_size=many"])
    with pytest.raises(ConfigError, match=r"data\.synthetic\.spurious_prob"):
        load_config(params, overrides=["data.synthetic.spurious_prob=1.5"])
    with pytest.raises(ConfigError, match=r"model\.mask_grad"):
        load_config(params, overrides=["model.mask_grad=sometimes"])
    with pytest.raises(ConfigError, match=str(params)):
        load_config(params, overrides=["train.seeds=[1, 1]"])


def test_overrides_and_composition():
    cfg = load_config(REPO / "params.yaml", overrides=["optim.epochs=7", "train.variants=[baseline_vit]"])
    assert cfg.optim.epochs == 7 and cfg.train.variants == ("baseline_vit",)
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    cub = compose_config(["dataset=cub", "recipe=paper", "optim.lr=2e-6"], conf_dir=CONF)
    assert (cub.data.dataset, cub.model.num_parts, cub.optim.epochs, cub.optim.lr) == ("cub", 8, 90, 2e-6)
    with pytest.raises(ConfigError, match="dataset=nope"):
        compose(["dataset=nope"], conf_dir=CONF)


def test_stage_cli_applies_overrides_and_a_stage_exits_cleanly_on_a_bad_key(capsys, monkeypatch):
    params = str(REPO / "params.yaml")
    cfg, args = stage_cli(
        "doc",
        lambda p: p.add_argument("--workers", type=int, default=2),
        ["--params", params, "--set", "optim.epochs=3", "--workers", "1"],
    )
    assert (cfg.optim.epochs, args.workers) == (3, 1)
    monkeypatch.setenv("HARDMASK_DEBUG", "")  # restored after the test, which --debug below sets
    with pytest.raises(SystemExit) as exit_info:
        run_stage(lambda: stage_cli("doc", argv=["--params", params, "--set", "optim.lrr=1"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.lrr: unknown key" in err and "Traceback" not in err
    with pytest.raises(ConfigError):  # --debug: the exception itself, with its traceback
        run_stage(lambda: stage_cli("doc", argv=["--params", params, "--set", "optim.lrr=1", "--debug"]))
