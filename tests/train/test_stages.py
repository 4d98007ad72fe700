"""The stage entries (qalign_lib.train.stages): arguments and run names checked before any work (no traversal, no
absolute path, no reserved name; the victim of a traversal untouched), the run's lock, the chain of stage 2."""
from __future__ import annotations

import pytest
import torch

from qalign_lib.core import config, layout
from qalign_lib.core.errors import ConfigError, ModelError, RunError
from qalign_lib.train import stages
from tests.helpers import held_lock, nothing_under, train_cfg


def test_stage2_chain_needs_finished_init(synthetic_data, tiny_model):
    with pytest.raises(RunError, match="run 'nope' .* not finished"):
        stages.stage2(train_cfg(tiny_model), init="nope", stage2_data=["gsm8k"])


def test_stage_entries_validate_their_arguments(synthetic_data, tiny_model):
    cfg = train_cfg(tiny_model)
    with pytest.raises(ConfigError, match="stage-1 task 'x2en_answers'"):
        stages.stage1(cfg, "x2en_answers")
    with pytest.raises(ConfigError, match="stage-2 data .*'wiki'"):
        stages.stage2(cfg, stage2_data="gsm8k,wiki")
    with pytest.raises(ConfigError, match="run_name='../x'"):
        stages.stage1(cfg, name="../x")
    assert stages.phases(cfg, "s1", "gsm8kinstruct,metamathqa", "mixed") == [
        ("mixed.phase1-gsm8kinstruct", "gsm8kinstruct", "s1"), ("mixed", "metamathqa", "mixed.phase1-gsm8kinstruct")]
    assert stages.phases(cfg) == [("base__gsm8k", "gsm8k", "base")]  # the size's stage2_data


def test_a_phase_name_over_the_limit_is_refused_before_any_phase_trains(synthetic_data, tiny_model):
    """A 120-character run name is fine, but its first phase's name (+ '.phase1-gsm8kinstruct') is not: refused when
    the phases are listed (stage2.ipynb prints them before training), not after phase 1 has trained."""
    cfg = train_cfg(tiny_model)
    name = "m" * 120
    assert stages.phases(cfg, "base", "gsm8k", name) == [(name, "gsm8k", "base")]
    with pytest.raises(ConfigError) as e:
        stages.phases(cfg, "base", "gsm8kinstruct,metamathqa", name)
    assert str(e.value) == (f"phase 1 of run_name={'m' * 40!r}... (141 characters): a run name is at most 128 "
                            "characters (it becomes a folder name); choose a shorter one")
    assert nothing_under(layout.size_root(cfg.size))


def test_stage1_selection_reaches_the_examples(synthetic_data, tiny_model):
    """stage1_seed, stage1_match_tokens and the shuffled control, as a stage-1 run plans them (training.plan)."""
    from qalign_lib.data import training_data
    from qalign_lib.train import training

    cfg = train_cfg(tiny_model)
    with pytest.raises(ConfigError, match="stage1_match_tokens='questions': name the stage-1 task"):
        stages.stage1(cfg.replace(stage1_match_tokens="questions"))
    plain = training.plan(cfg, "a", ["x2en_question"], ["de", "fr"])
    seeded = training.plan(cfg.replace(stage1_seed=1), "a", ["x2en_question"], ["de", "fr"])
    assert sorted(r["id"] for r in seeded["examples"]) == sorted(
        r["id"] for r in training_data.build("x2en_question", ["de", "fr"], cfg.stage1_limit, subset_seed=1))
    assert seeded["fingerprint"] != plain["fingerprint"]
    assert training.plan(cfg.replace(stage1_seed=None), "a", ["x2en_question"], ["de", "fr"])["fingerprint"] == plain["fingerprint"]
    matched = training.plan(cfg.replace(stage1_match_tokens="x2en_question"), "a", ["flores_x2en"], ["de"])
    count = training.token_counter(cfg.model)
    expected = training_data.build("flores_x2en", ["de"], cfg.stage1_limit, match="x2en_question", count_tokens=count)
    assert sorted(map(str, matched["examples"])) == sorted(map(str, expected))
    shuffled = training.plan(cfg, "a", ["x2en_question_shuffled"], ["de", "fr"])
    assert sorted(r["completion"] for r in shuffled["examples"]) == sorted(r["completion"] for r in plain["examples"])
    assert shuffled["fingerprint"] != plain["fingerprint"]


def test_big_size_without_gpu_stops_early():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        stages.stage1(config.resolve("13b"))


def test_run_name_with_traversal_is_refused_and_the_victim_untouched(synthetic_data, tiny_model, tmp_path):
    victim = tmp_path / "victim"  # runs/tiny/../../victim
    (victim / "model").mkdir(parents=True)
    (victim / "model" / "weights.bin").write_bytes(b"precious")
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="victim"):
        stages.stage1(cfg, "x2en_question", "de", name="../../victim")
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == ["model", "model/weights.bin"]
    assert (victim / "model" / "weights.bin").read_bytes() == b"precious"
    assert nothing_under(layout.runs_dir())


def test_absolute_run_name_is_refused(synthetic_data, tiny_model, tmp_path):
    target = tmp_path / "elsewhere"
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="elsewhere"):
        stages.stage1(cfg, "x2en_question", "de", name=str(target))
    assert not target.exists() and nothing_under(layout.runs_dir())


def test_base_is_a_reserved_run_name(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, report_to="none")
    with pytest.raises(ConfigError, match="reserved"):
        stages.stage1(cfg, "x2en_question", "de", name="base")
    assert nothing_under(layout.runs_dir())


@pytest.mark.timeout(180)
def test_training_holds_the_run_lock(synthetic_data, tiny_model):
    cfg = config.resolve("tiny", model=tiny_model, stage1_limit=2, batch_size=4, per_device_batch_size=4,
                         report_to="none")
    run = layout.run("tiny", "x")
    with held_lock(run.lock_file) as holder:
        with pytest.raises(RunError) as e:
            stages.stage1(cfg, "x2en_question", "de", name="x")
        assert str(holder.pid) in str(e.value)
    assert not run.train_log.exists() and not run.model.exists() and not run.done_marker.exists()
