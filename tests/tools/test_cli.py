"""The ``qalign`` command: data check/build, score, config; user errors exit 1 with one line, usage errors exit 2."""
import json
import subprocess
import sys

import pytest

from qalign_lib.core import config
from qalign_lib.tools.cli import main
from tests.helpers import ROOT, one_line_error
from tests.synthetic import make_data_dir


def test_data_check_study_tiny_passes_on_the_real_snapshot(real_data, capsys):
    assert main(["data", "check", "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "all present" in out and "gsm8kinstruct_question" in out


def test_data_check_fails_with_reason_on_the_real_snapshot(real_data, capsys):
    assert main(["data", "check", "--study", "paper", "--size", "7b"]) == 1
    out = capsys.readouterr().out
    assert "MISSING metamathqa [en]" in out and "MISSING gsm8kinstruct_question [bn]" in out


def test_data_check_on_synthetic_data(tmp_path, capsys):
    full = make_data_dir(tmp_path / "full")
    assert main(["data", "check", "--study", "paper", "--size", "7b", "--data-dir", str(full)]) == 0
    assert "all present" in capsys.readouterr().out
    partial = make_data_dir(tmp_path / "partial", drop=["metamathqa/metamathqa.jsonl", "gsm8kinstruct/de.jsonl"])
    assert main(["data", "check", "--study", "paper", "--size", "7b", "--data-dir", str(partial)]) == 1
    out = capsys.readouterr().out
    assert "2 file(s) missing" in out and "MISSING metamathqa [en]" in out and "MISSING gsm8kinstruct [de]" in out


def test_data_build_writes_inspectable_rows(synthetic_data, tmp_path):
    out = tmp_path / "ex.jsonl"
    assert main(["data", "build", "--task", "x2en_question", "--langs", "de,zh", "--limit", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "completion", "lang", "id"}
    assert rows[0]["prompt"].startswith("Below is an instruction") and "from German to English." in rows[0]["prompt"]
    mixed = tmp_path / "mixed.jsonl"
    assert main(["data", "build", "--task", "x2en_question+gsm8k", "--langs", "de", "--limit", "3", "--out", str(mixed)]) == 0
    assert sorted(json.loads(line)["lang"] for line in mixed.read_text().splitlines()) == ["de"] * 3 + ["en"] * 3


def test_score_prints_one_json_object(synthetic_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"  # synthetic gold of id 0 is 5 in every language
    gen.write_text(json.dumps({"lang": "en", "id": 0, "response": "5"}) + "\n" + json.dumps({"lang": "sw", "id": 0, "response": "7"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen), "--scorer", "strict"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"benchmark", "scorer", "n", "accuracy", "average", "average_non_en"}
    assert result["accuracy"] == {"sw": 0.0, "en": 100.0} and result["average"] == 50.0 and result["scorer"] == "strict"


def test_user_errors_exit_1_with_one_line(synthetic_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "en", "id": 4000, "response": "18"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen)]) == 1
    assert "id 4000 is not a mgsm en question" in one_line_error(capsys.readouterr().err)
    partial = make_data_dir(tmp_path / "partial", drop=["gsm8kinstruct_question/bn.jsonl"])
    out = tmp_path / "x.jsonl"
    assert main(["data", "build", "--task", "x2en_question", "--langs", "bn", "--out", str(out), "--data-dir", str(partial)]) == 1
    assert "missing file" in one_line_error(capsys.readouterr().err) and not out.exists()
    assert main(["data", "build", "--task", "x2en_question", "--langs", "xx", "--out", str(out)]) == 1
    assert "unknown or unsupported language code(s) xx" in one_line_error(capsys.readouterr().err)
    assert main(["data", "check", "--study", "nope"]) == 1
    assert "unknown study 'nope'" in one_line_error(capsys.readouterr().err)


def test_usage_errors_exit_2(capsys):
    for argv in (["score", "--benchmark", "gsm8k", "--generations", "x"], ["config", "--bogus"], ["nope"], []):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2, argv
    assert "invalid choice: 'gsm8k'" in capsys.readouterr().err


def test_config_prints_the_table(capsys):
    assert main(["config", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Parameters (size tiny (") and "sizes: 13b, 7b, tiny" in out
    assert "| parameter | type | default | value | affects | meaning |" in out
    for name in config.params():
        assert f"| `{name}` |" in out, name
    assert "| `model` | str | `''` | `'embedded:smollm2-135m-instruct'` | learned |" in out
    assert "| `lora_r` | int or null | `None` | `16` | learned |" in out
    assert main(["config"]) == 0  # the declared defaults, no value column
    out = capsys.readouterr().out
    assert "the declared defaults" in out and "| parameter | type | default | affects | meaning |" in out


def test_config_set_checks_and_applies_overrides(capsys):
    assert main(["config", "--size", "7b", "--set", "lr=1e-5", "eval_langs=de,zh"]) == 0
    out = capsys.readouterr().out
    assert "| `lr` | float | `2e-05` | `1e-05` |" in out and "`['de', 'zh']`" in out
    assert main(["config", "--size", "tiny", "--set", "lr=fast"]) == 1
    message = one_line_error(capsys.readouterr().err)
    assert "parameter lr='fast'" in message and "expected float" in message and "tiny.yaml" in message
    assert main(["config", "--size", "tiny", "--set", "epoch=2"]) == 1
    assert "did you mean 'epochs'?" in one_line_error(capsys.readouterr().err)
    assert main(["config", "--size", "bench"]) == 1
    assert "unknown size 'bench'" in one_line_error(capsys.readouterr().err)


def test_download_offline_is_a_clear_message(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "qalign_lib.tools.cli", "data", "download", "--out", str(tmp_path / "d"), "--datasets", "mgsm"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    # the progress bar may have drawn on stderr before; the error is the one last line
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("qalign: error: cannot download juletxara/mgsm") and "offline" in last
    assert r.stderr.count("qalign: error:") == 1 and "Traceback" not in r.stderr
