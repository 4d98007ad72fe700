"""The typed parameter schema (qalign_lib.config): sizes, validation, coercion, and fingerprints derived from the
declaration of what each parameter affects."""
from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest

from qalign_lib.core import benchmarks, config
from qalign_lib.core.config import ConfigError
from qalign_lib.evaluation import evaluator
from qalign_lib.models import modeling
from qalign_lib.train import training
from tests.helpers import CORPUS


# ----------------------------------------------------------------------------------------------------------------
# Deriving a different valid value of any declared parameter from its declaration


def _optional_inner(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(inner) == 1, tp
        return inner[0]
    return None


def flipped(p: config.Param, value):
    """A value of parameter ``p`` that differs from ``value`` and is valid for its declared type and range."""
    tp = p.type
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None:
            return flipped(dataclasses.replace(p, type=inner), None)
        tp = inner
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return next(a for a in args if a != value)
    if tp is bool:
        return not value
    if tp is int:
        if value is None:
            return int(p.min if p.min is not None else 1) + 1
        return value + 1 if p.max is None or value + 1 <= p.max else value - 1
    if tp is float:
        if value is None or value == 0:
            return (p.min or 0) + 0.1
        return value / 2
    if tp is str:
        return (value or "x") + "-other"
    if origin is list:
        (item,) = args
        if typing.get_origin(item) is typing.Literal:
            return [next(a for a in typing.get_args(item) if a not in value)]
        return value[:-1] if len(value) > 1 else value + value
    if origin is dict:  # keyed by benchmark (the only mapping parameter): change one benchmark's value
        name = benchmarks.NAMES[0]
        current = (value or {}).get(name, 1)
        return {**(value or {}), name: current + 1}
    raise AssertionError(f"no rule to flip {p.name} of type {tp}")


def test_flipped_values_are_valid_and_different():
    base = config.resolve("tiny")
    for name, p in config.schema().items():
        if p.group == "internal":
            continue
        value = flipped(p, getattr(base, name))
        changed = base.replace(**{name: value})  # validated like an override
        assert getattr(changed, name) != getattr(base, name), name


# ----------------------------------------------------------------------------------------------------------------
# Sizes


def test_every_size_file_resolves():
    assert config.sizes() == ["13b", "7b", "tiny"]
    for size in config.sizes():
        cfg = config.resolve(size)
        assert isinstance(cfg, config.Config) and cfg.size == size and cfg.model
    assert config.resolve("7b").launch == "fsdp" and config.resolve("13b").launch == "zero3"
    assert config.resolve("tiny").model == "embedded:smollm2-135m-instruct"


def test_size_files_hold_only_deltas_over_the_defaults():
    schema = config.schema()
    for size in config.sizes():
        raw = config.read_yaml(config.size_file(size))
        assert "model" in raw, size
        for key, value in raw.items():
            assert key in schema and schema[key].group != "internal", (size, key)
            assert config.validate(key, value, size) != schema[key].default, \
                f"params/sizes/{size}.yaml restates the default {key}: {value!r}"


def test_overrides_apply_over_the_size_and_none_is_ignored():
    cfg = config.resolve("tiny", lr=1e-5, epochs=None)
    assert cfg.lr == 1e-5 and cfg.epochs == config.resolve("tiny").epochs
    assert cfg.lora_r == 16 and cfg.batch_size == 8               # the size's deltas
    assert cfg.warmup_ratio == config.schema()["warmup_ratio"].default  # the declared default
    assert config.overrides({"lr": 1e-5, "epochs": None, "other": 3}, ["lr", "epochs"]) == {"lr": 1e-5}


def test_config_is_frozen_typed_and_replace_validates():
    cfg = config.resolve("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg["lr"]  # type: ignore[index]  # attribute access only
    assert cfg.replace(lr="3e-4").lr == 3e-4 and cfg.lr != 3e-4
    with pytest.raises(ConfigError, match=r"lr=-1.*Config.replace.*must be > 0"):
        cfg.replace(lr=-1)
    assert config.build(cfg.to_dict(), "roundtrip") == cfg


def test_build_names_its_source_and_needs_a_model():
    with pytest.raises(ConfigError, match=r"parameter epochs='many' \(run.json of x\): expected int"):
        config.build({"model": "m", "epochs": "many"}, "run.json of x")
    with pytest.raises(ConfigError, match=r"my source: no model set"):
        config.build({}, "my source")


# ----------------------------------------------------------------------------------------------------------------
# Errors: they name the key, the value, the expected type and the file


def test_unknown_size_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown size 'bench': no file .*sizes/bench.yaml; known sizes: 13b, 7b, tiny"):
        config.resolve("bench")  # params/bench.yaml is the speed benchmark's, not a size
    for bad in ("", "../tiny", ".tiny", "sizes/tiny"):
        with pytest.raises(ConfigError, match="size"):
            config.resolve(bad)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown parameter 'epoch' \(override of size tiny .*tiny.yaml\)\); "
                                          r"did you mean 'epochs'\?"):
        config.resolve("tiny", epoch=2)
    with pytest.raises(ConfigError, match=r"unknown parameter 'size'"):  # internal, not settable
        config.validate("size", "7b", "x")


def test_unknown_key_in_a_size_file_names_the_file(params_copy):
    path = params_copy / "sizes" / "tiny.yaml"
    path.write_text(path.read_text() + "\nleraning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match=rf"unknown parameter 'leraning_rate' \(size file {path}\)"):
        config.resolve("tiny")


def test_bad_value_in_a_size_file_names_the_file(params_copy):
    path = params_copy / "sizes" / "7b.yaml"
    path.write_text(path.read_text() + "\nepochs: three\n")
    with pytest.raises(ConfigError, match=rf"parameter epochs='three' \(size file {path}\): expected int"):
        config.resolve("7b")
    path.write_text("lr: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"size 7b .*no model set"):
        config.resolve("7b")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"7b.yaml: expected a mapping"):
        config.resolve("7b")
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"7b.yaml: not valid YAML"):
        config.resolve("7b")


def test_size_file_duplicates_bombs_and_huge_files_are_refused(params_copy):
    """Issue 21, cases 4 and 11: a size file's repeated key (YAML keeps the last one), an alias bomb and an oversized
    file are one-line errors naming the file."""
    path = params_copy / "sizes" / "tiny.yaml"
    original = path.read_text()
    path.write_text(original + "\nlr: 2.0e-3\n")  # tiny.yaml sets lr already
    with pytest.raises(ConfigError, match=rf"^{path}: line \d+: duplicate key 'lr' \(first on line \d+\)"):
        config.resolve("tiny")
    bomb = "\n".join(["x0: &x0 [de, de, de, de, de, de, de, de, de, de]"]
                     + [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]" for i in range(1, 10)])
    path.write_text(bomb + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: expands to more than"):
        config.read_yaml(path)
    path.write_text(original + "\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}: \d+ bytes, larger than the limit"):
        config.resolve("tiny")


def test_mapping_parameters_parse_yaml_strings_safely():
    assert config.validate("max_new_tokens", "{mgsm: 5}", "x") == {"mgsm": 5}
    with pytest.raises(ConfigError, match=r"parameter max_new_tokens=.*expected mapping"):
        config.validate("max_new_tokens", "{mgsm: 5, mgsm: 6}", "x")


@pytest.mark.parametrize("key, value, expected", [
    ("eval_token_budget", "lots", "int or null"),        # default None: the type is still checked
    ("eval_limit", "all", "int or null"),
    ("stage1_limit", 2.5, "int or null"),
    ("max_new_tokens", "lots", "mapping of str to int or null"),
    ("max_new_tokens", {"mgsm": "long"}, "mapping of str to int or null"),
    ("lr", "fast", "float"),
    ("lr", True, "float"),
    ("epochs", 1.5, "int"),
    ("epochs", True, "int"),
    ("group_by_length", "maybe", "bool"),
    ("dtype", "fp8", "one of float32, bfloat16, float16"),
    ("scheduler", "exponential", "one of cosine"),
    ("report_to", ["tensorboard", "comet"], "list of one of tensorboard"),
    ("model", 7, "str"),
])
def test_wrong_types_name_key_value_type_and_file(key, value, expected):
    with pytest.raises(ConfigError) as e:
        config.resolve("tiny", **{key: value})
    message = str(e.value)
    assert message.startswith(f"parameter {key}={value!r} (override of size tiny (")
    assert "params/sizes/tiny.yaml" in message and f"expected {expected}" in message


@pytest.mark.parametrize("key, value, bound", [
    ("epochs", -1, ">= 1"), ("batch_size", 0, ">= 1"), ("lr", 0, "> 0"), ("lr", "-1e-5", "> 0"),
    ("eval_limit", 0, ">= 1"), ("warmup_ratio", 1.5, "<= 0.99"), ("max_length", 4, ">= 8"),
    ("max_new_tokens", {"mgsm": 0}, ">= 1"), ("stage1_limit", "0", ">= 1"),
])
def test_out_of_range_values(key, value, bound):
    with pytest.raises(ConfigError, match=rf"parameter {key}=.*tiny.yaml.*out of range, must be (.* )?{re.escape(bound)}"):
        config.resolve("tiny", **{key: value})


def test_names_from_other_registries_are_checked():
    with pytest.raises(ConfigError, match=r"eval_langs .*unknown 'xx'"):
        config.resolve("tiny", eval_langs="de,xx")
    with pytest.raises(ConfigError, match=r"stage1_langs .*unknown 'en'"):
        config.resolve("tiny", stage1_langs="de,en")
    with pytest.raises(ConfigError, match=r"max_new_tokens .*unknown 'gsm8k'"):
        config.resolve("tiny", max_new_tokens={"gsm8k": 5})
    with pytest.raises(ConfigError, match=r"report_to=.*'none' cannot be combined"):
        config.resolve("tiny", report_to="none,wandb")


LIST_PARAMETERS = ["eval_langs", "analysis_langs", "analysis_benchmarks", "stage1_langs", "stage2_data", "report_to"]


@pytest.mark.parametrize("value", ["", " , ", []], ids=["''", "' , '", "[]"])
@pytest.mark.parametrize("key", LIST_PARAMETERS)
def test_an_empty_list_is_an_error_never_all(key, value):
    """-p eval_langs "" (issue 21 case 12): an empty list names the parameter, never means every language."""
    assert set(LIST_PARAMETERS) == {p.name for p in config.schema().values() if typing.get_origin(p.type) is list}
    example = ",".join(config.schema()[key].default)
    with pytest.raises(ConfigError) as e:
        config.resolve("tiny", **{key: value})
    assert str(e.value) == (f"parameter {key}={value!r} (override of size tiny ({config.size_file('tiny')})): an empty "
                            f"list; name at least one, e.g. {example}")


def test_an_empty_list_in_a_size_file_is_an_error(params_copy):
    (params_copy / "sizes" / "tiny.yaml").write_text("analysis_langs: []\n")
    with pytest.raises(ConfigError, match=r"^parameter analysis_langs=\[\] \(size file .*tiny.yaml\): an empty list"):
        config.resolve("tiny")


@pytest.mark.parametrize("key, value", [("lr", "nan"), ("lr", "inf"), ("warmup_ratio", float("nan"))])
def test_non_finite_floats_are_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        config.resolve("tiny", **{key: value})


def test_papermill_strings_are_coerced():
    cfg = config.resolve("tiny", lr="1e-5", epochs="2", group_by_length="true", gradient_checkpointing="False",
                         eval_langs="de,zh", stage1_langs=" de , fr ", eval_limit="null", stage2_limit="None",
                         max_new_tokens="{mgsm: 5, msvamp: 7}", report_to="none", warmup_ratio=0, batch_size=16.0)
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.epochs == 2 and isinstance(cfg.epochs, int) and cfg.batch_size == 16 and isinstance(cfg.batch_size, int)
    assert cfg.group_by_length is True and cfg.gradient_checkpointing is False
    assert cfg.eval_langs == ["de", "zh"] and cfg.stage1_langs == ["de", "fr"]
    assert cfg.eval_limit is None and cfg.stage2_limit is None  # "null" overrides the size's 3 and 32
    assert cfg.max_new_tokens == {"mgsm": 5, "msvamp": 7} and cfg.max_new("mgsm") == 5
    assert cfg.report_to == ["none"] and cfg.warmup_ratio == 0.0


def test_max_new_falls_back_to_the_benchmark_registry():
    cfg = config.resolve("7b")
    assert cfg.max_new_tokens is None
    assert {b: cfg.max_new(b) for b in benchmarks.NAMES} == {b.name: b.max_new_tokens for b in benchmarks.REGISTRY.values()}
    assert config.resolve("7b", max_new_tokens={"mgsm": 9}).max_new("msvamp") == benchmarks.get("msvamp").max_new_tokens


# ----------------------------------------------------------------------------------------------------------------
# The schema


def test_schema_declares_every_parameter_once_with_help_and_affects():
    schema = config.schema()
    assert set(schema) == {f.name for f in dataclasses.fields(config.Config)}
    groups = {"model", "train", "data", "eval", "analysis", "launch", "run"}
    for name, p in schema.items():
        if p.group == "internal":
            continue
        assert p.help and p.affects in config.AFFECTS and p.group in groups, name
        assert config.validate(name, p.default, "default") == p.default or name == "model", name  # defaults are valid
    assert set(config.params()) == {n for n, p in schema.items() if p.group != "internal"}
    assert sorted(sum((config.params(a) for a in config.AFFECTS), [])) == sorted(config.params())
    assert "group_by_length" in config.params("learned")  # a different data order than the paper's random one
    assert {"lr", "epochs", "batch_size", "seed", "max_length"} <= set(config.params("learned"))
    assert {"gradient_checkpointing", "padding_free", "eval_batch_size"} <= set(config.params("speed"))
    # with loss_reduction reference the micro-batch decides which sequences share a loss mean
    assert {"per_device_batch_size", "loss_reduction"} <= set(config.params("learned"))
    assert {"save_steps", "num_processes", "report_to"} <= set(config.params("runtime"))
    assert config.params("generated", group="eval") == ["max_new_tokens", "engine"]
    assert config.params("generated", group="analysis") == ["translation_max_new_tokens", "representation_pooling"]
    assert config.params(group="eval") == [n for n, p in schema.items() if p.group == "eval"]
    table = config.describe(config.resolve("tiny"))
    assert all(f"| `{name}` |" in table for name in config.params())


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints, derived from the declaration


def _plan_fp(cfg) -> str:
    return training.plan(cfg, "fp", ["x2en_question"], ["de", "fr"], "base", 1)["fingerprint"]


def test_learned_parameters_change_the_fingerprints(synthetic_data, tiny_model):
    base = config.resolve("tiny", model=tiny_model)
    learned = [n for n in config.params("learned") if n != "model"]
    assert learned and "group_by_length" in learned
    fp, plan_fp = config.fingerprint(base), _plan_fp(base)
    for name in learned:
        p = config.schema()[name]
        cfg = base.replace(**{name: flipped(p, getattr(base, name))})
        assert config.fingerprint(cfg) != fp, f"{name} is declared learned but does not change config.fingerprint"
        assert _plan_fp(cfg) != plan_fp, f"{name} is declared learned but does not change the run fingerprint"


def test_speed_and_runtime_parameters_do_not_change_the_fingerprints(synthetic_data, tiny_model):
    base = config.resolve("tiny", model=tiny_model)
    names = config.params("speed") + config.params("runtime")
    assert names
    fp, plan_fp = config.fingerprint(base), _plan_fp(base)
    for name in names:
        cfg = base.replace(**{name: flipped(config.schema()[name], getattr(base, name))})
        assert config.fingerprint(cfg) == fp, f"{name} is declared {config.schema()[name].affects} but changes config.fingerprint"
        assert _plan_fp(cfg) == plan_fp, f"{name} is declared {config.schema()[name].affects} but changes the run fingerprint"


def test_data_parameters_change_the_run_fingerprint_through_the_examples(synthetic_data, tiny_model, tmp_path):
    base = config.resolve("tiny", model=tiny_model)
    assert config.fingerprint(base.replace(stage1_limit=3)) == config.fingerprint(base)  # not in the config hash ...
    assert _plan_fp(base.replace(stage1_limit=3)) != _plan_fp(base)                     # ... but in the examples
    assert _plan_fp(base.replace(stage2_limit=3)) == _plan_fp(base)                     # stage 1 does not read it
    # the model is fingerprinted by its files: another model, another run
    other = str(modeling.tiny_random_llama(tmp_path / "other", CORPUS, vocab_size=400, hidden=32, layers=2, heads=4))
    assert _plan_fp(base.replace(model=other)) != _plan_fp(base)


def test_generation_settings_follow_the_generated_parameters():
    cfg = config.resolve("tiny")
    ref = evaluator.settings(cfg, "mgsm", "some/model")
    assert ref["model"] == "some/model" and ref["max_new_tokens"] == cfg.max_new("mgsm")
    for name in config.params("generated", group="eval"):
        value = getattr(cfg, name)
        # engine: auto resolves to hf here (no vLLM or no GPU), so flip to the engine it does not resolve to
        other = ("vllm" if evaluator.settings(cfg, "mgsm", "m")["engine"] == "hf" else "hf") if name == "engine" \
            else flipped(config.schema()[name], value)
        changed = cfg.replace(**{name: other})
        assert evaluator.settings(changed, "mgsm", "some/model") != ref, name
    for name in config.params("speed") + config.params("selection") + config.params("runtime"):
        changed = cfg.replace(**{name: flipped(config.schema()[name], getattr(cfg, name))})
        assert evaluator.settings(changed, "mgsm", "some/model") == ref, name
    assert evaluator.settings(cfg.replace(eval_batch_size=1), "mgsm", "some/model") == ref
    assert evaluator.settings(cfg.replace(eval_token_budget=500), "mgsm", "some/model") == ref
    assert evaluator.settings(cfg, "mgsm", "other/model") != ref


# ----------------------------------------------------------------------------------------------------------------
# Zero and negative values (the strings papermill passes too): refused with the key's name


@pytest.mark.parametrize("key, value", [("eval_limit", 0), ("epochs", -1), ("batch_size", 0), ("eval_batch_size", 0)],
                         ids=["eval_limit=0", "epochs=-1", "batch_size=0", "eval_batch_size=0"])
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"{key}={value}\b.*out of range"):
        config.resolve("tiny", **{key: value})
    with pytest.raises(ConfigError, match=rf"{key}="):  # the strings papermill passes too
        config.resolve("tiny", **{key: str(value)})
