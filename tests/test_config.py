"""Config loading: the generic strict YAML -> dataclass loader, --set overrides, the training
config's cross-field rules, the shipped configs, and one-line CLI errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mvf.config import apply_override, from_dict, load_config, to_dict
from mvf.errors import MvfError
from mvf.train.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


# ----------------------------------------------------------------------------- generic loader
@dataclass
class Inner:
    name: str = "a"
    rate: float = 1.0
    mode: Literal["x", "y"] = "x"


@dataclass
class Outer:
    count: int = 1
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    table: dict[str, float] = field(default_factory=dict)
    maybe: int | None = None


def test_from_dict_builds_nested_dataclasses():
    cfg = from_dict(Outer, {"count": 3, "inner": {"rate": 2}, "items": [{"name": "p"}, {"name": "q", "mode": "y"}],
                            "table": {"k": 1}, "maybe": None})
    assert cfg.count == 3 and cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert [i.name for i in cfg.items] == ["p", "q"] and cfg.items[1].mode == "y"
    assert cfg.table == {"k": 1.0} and cfg.maybe is None
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("data,match", [
    ({"cuont": 1}, "unknown config key 'cuont'"),
    ({"inner": {"rat": 1}}, "unknown config key 'inner.rat'"),
    ({"items": [{"name": "p", "bogus": 1}]}, "unknown config key 'items.0.bogus'"),
    ({"count": "three"}, "'count': expected an integer"),
    ({"count": 1.5}, "'count': expected an integer"),
    ({"flag": "yes"}, "'flag': expected true/false"),
    ({"inner": {"mode": "z"}}, "'inner.mode': 'z' is not one of"),
    ({"items": {"name": "p"}}, "'items': expected a list"),
])
def test_from_dict_rejects_bad_keys_and_types(data, match):
    with pytest.raises(MvfError, match=match):
        from_dict(Outer, data)


def test_overrides_by_path_index_and_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("count: 1\nitems:\n  - name: p\n  - name: q\n")
    cfg = load_config(path, Outer, ["count=5", "inner.rate=0.5", "items.1.rate=3", "items.p.mode=y",
                                    "table.w=2.0e-3"])
    assert cfg.count == 5 and cfg.inner.rate == 0.5
    assert cfg.items[1].rate == 3.0 and cfg.items[0].mode == "y" and cfg.table == {"w": 0.002}
    with pytest.raises(MvfError, match="no list item 'zz'"):
        load_config(path, Outer, ["items.zz.rate=1"])
    with pytest.raises(MvfError, match="expected key=value"):
        apply_override({}, "count")
    with pytest.raises(MvfError, match=f"{path}: unknown config key 'nope'"):
        load_config(path, Outer, ["nope=1"])


def test_exponent_without_a_dot_is_a_number(tmp_path):
    cfg = load_config(None, Outer, ["inner.rate=1e-4"])
    assert cfg.inner.rate == 1e-4


def test_yaml_file_errors(tmp_path):
    with pytest.raises(MvfError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", Outer)
    bad = tmp_path / "bad.yaml"
    bad.write_text("count: [1,\n")
    with pytest.raises(MvfError, match="invalid YAML"):
        load_config(bad, Outer)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(MvfError, match="must be a YAML mapping"):
        load_config(notmap, Outer)


# ----------------------------------------------------------------------------- training configs
@pytest.mark.parametrize("name", ["paper", "cpu", "cpu_front", "smoke", "selfsup_smoke"])
def test_shipped_configs_load(name):
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, TrainConfig) and any(st.kind == "supervised" for st in cfg.stages)


def test_paper_config_has_the_paper_hyperparameters():
    cfg = load_train_config(CONFIGS / "paper.yaml")
    sup = cfg.stages[0]
    assert cfg.model.backbone == "vgg" and cfg.model.image_size == 224 and cfg.model.fusion == "concat"
    assert sup.lr == 1e-5 and sup.batch_size == 12 and sup.loss.pose == 10.0


def test_front_only_config_differs_from_cpu_only_in_views():
    """configs/cpu_front.yaml is cpu.yaml with one view: same backbone, size and supervised budgets."""
    import dataclasses

    cpu, front = load_train_config(CONFIGS / "cpu.yaml"), load_train_config(CONFIGS / "cpu_front.yaml")
    assert front.model.views == ["front"] and front.model.fusion == "mean"
    assert dataclasses.replace(front.model, views=cpu.model.views, fusion=cpu.model.fusion) == cpu.model
    assert front.stages == [st for st in cpu.stages if st.kind != "self_supervised"]


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,overrides,match", [
    ("model: {backbone: vgg19}\n", [], "'model.backbone': 'vgg19' is not one of"),
    ("stages: [{name: s, steps: 5, lr: 0.1, loss: {landmrk: 1}}]\n", [], "unknown config key 'stages.0.loss.landmrk'"),
    ("stages: [{name: s, steps: 5, epochs: 2}]\n", [], "exactly one of 'steps' and 'epochs'"),
    ("stages: [{name: s}]\n", [], "exactly one of 'steps' and 'epochs'"),
    ("stages: [{name: s, steps: 5, kind: magic}]\n", [], "unknown stage kind 'magic'"),
    ("stages: [{name: s, steps: 5}, {name: s, steps: 5}]\n", [], "stage names must be unique"),
    ("model: {fusion: concat, views: [front]}\nstages: [{name: s, steps: 5}]\n", [], "concat needs exactly"),
    ("model: {fusion: mean, views: [left, front]}\nstages: [{name: s, steps: 5}]\n", [], "must follow the order"),
    ("model: {fusion: mean, views: [top]}\nstages: [{name: s, steps: 5}]\n", [], "unknown view 'top'"),
    ("stages: [{name: s, steps: 5}]\n", ["stages.s.loss.vertex=-1"], "weights must be >= 0"),
    ("stages: [{name: s, steps: 5}]\n", ["stages.s.lr=fast"], "expected a number"),
    ("model: {fusion: mean, views: [front]}\npictures_every: 10\nstages: [{name: s, steps: 5}]\n", [],
     "cross-view warps, which need two or more views"),
    ("stages: [{name: s, steps: 5, kind: geometry, landmark_noise_px: -1}]\n", [], "landmark_noise_px': must be >= 0"),
])
def test_bad_training_configs(tmp_path, text, overrides, match):
    path = _write(tmp_path, text)
    with pytest.raises(MvfError, match=match) as err:
        load_train_config(path, overrides)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_stage_kind_rejects_weights_it_does_not_use(tmp_path, monkeypatch):
    """A weight that only another stage kind uses is an error, not silently ignored."""
    import dataclasses

    from mvf.train import stages

    monkeypatch.setitem(stages.STAGE_KINDS, "landmarks_only",
                        dataclasses.replace(stages.SUPERVISED, loss_terms=("landmark",)))
    path = _write(tmp_path, "stages: [{name: s, kind: landmarks_only, steps: 5, loss: {landmark: 1, vertex: 1}}]\n")
    with pytest.raises(MvfError, match="'stages.0.loss.vertex': a landmarks_only stage does not use it"):
        load_train_config(path)


def test_cli_reports_a_bad_config_key_on_one_line(tmp_path, capsys):
    from mvf.cli import main

    path = _write(tmp_path, "modle: {}\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'modle'" in lines[0] and str(path) in lines[0]


def test_landmark2d_needs_the_landmark_head(tmp_path):
    path = _write(tmp_path, "stages: [{name: s, steps: 5, loss: {landmark2d: 0.1}}]\n")
    with pytest.raises(MvfError, match="needs model.landmark_head"):
        load_train_config(path)
    assert load_train_config(path, ["model.landmark_head=true"]).model.landmark_head


def test_refine_and_precision_keys_are_checked(tmp_path):
    path = _write(tmp_path, "model: {refine: landmarks}\nstages: [{name: s, steps: 5}]\n")
    with pytest.raises(MvfError, match="model.refine"):
        load_train_config(path)
    assert load_train_config(path, ["model.landmark_head=true"]).model.refine == "landmarks"
    with pytest.raises(MvfError, match="refine_steps"):
        load_train_config(path, ["model.landmark_head=true", "model.refine_steps=0"])
    with pytest.raises(MvfError, match="precision"):
        load_train_config(_write(tmp_path, "model: {precision: fp8}\nstages: [{name: s, steps: 5}]\n"))
