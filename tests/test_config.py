from pathlib import Path

import pytest
import yaml

from hardmask.config import ConfigError, load_config, parse_override, stage_cli

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_params_yaml_is_valid_and_complete():
    cfg = load_config(REPO / "params.yaml")
    assert cfg.data.dataset == "synthetic"
    # every key of params.yaml is a schema key and every schema key is spelled out in params.yaml
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(on_disk) == set(cfg.dump())


def test_unknown_key_names_the_key(tmp_path):
    path = _write(tmp_path, {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        load_config(path)


def test_wrong_type_and_range_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.loader\.batch_size"):
        load_config(_write(tmp_path, {"data": {"loader": {"batch_size": "many"}}}))
    with pytest.raises(ConfigError, match=r"data\.synthetic\.spurious_prob"):
        load_config(_write(tmp_path, {"data": {"synthetic": {"spurious_prob": 1.5}}}))
    with pytest.raises(ConfigError, match=r"model\.mask_grad"):
        load_config(_write(tmp_path, {"model": {"mask_grad": "sometimes"}}))
    with pytest.raises(ConfigError, match=str(tmp_path / "params.yaml")):
        load_config(_write(tmp_path, {"train": {"seeds": [1, 1]}}))


def test_overrides_and_preset(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "p.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.5, "epochs": 3}}))
    path = _write(tmp_path, {"optim": {"lr": 0.1}})
    cfg = load_config(path, overrides=["base.preset=configs/p.yaml", "optim.epochs=7"])
    assert cfg.optim.lr == 0.5 and cfg.optim.epochs == 7
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(path, overrides=["base.preset=configs/missing.yaml"])


def test_stage_cli_applies_overrides_and_exits_cleanly_on_a_bad_key(tmp_path, capsys):
    path = _write(tmp_path, {"optim": {"lr": 0.5}})
    cfg, args = stage_cli(
        "doc",
        lambda p: p.add_argument("--workers", type=int, default=2),
        ["--params", str(path), "--set", "optim.epochs=3", "--workers", "1"],
    )
    assert (cfg.optim.lr, cfg.optim.epochs, args.workers) == (0.5, 3, 1)
    with pytest.raises(SystemExit) as exit_info:
        stage_cli("doc", argv=["--params", str(path), "--set", "optim.lrr=1"])
    assert exit_info.value.code == 2
    assert "optim.lrr: unknown key" in capsys.readouterr().err
