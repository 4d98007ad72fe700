import json
import subprocess
import sys

from qalign_lib.cli import main


def test_data_check_study_tiny_passes(real_data, capsys):
    assert main(["data", "check", "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "all present" in out and "gsm8kinstruct_question" in out


def test_data_check_fails_with_reason(real_data, capsys):
    assert main(["data", "check", "--study", "paper", "--size", "7b"]) == 1
    out = capsys.readouterr().out
    assert "MISSING metamathqa [en]" in out and "MISSING gsm8kinstruct_question [bn]" in out


def test_data_build_writes_inspectable_rows(real_data, tmp_path, capsys):
    out = tmp_path / "ex.jsonl"
    assert main(["data", "build", "--task", "x2en_question", "--langs", "de,zh", "--limit", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "completion", "lang", "id"}
    assert rows[0]["prompt"].startswith("Below is an instruction") and "from German to English." in rows[0]["prompt"]


def test_score_prints_one_json_object(real_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "en", "id": 0, "response": "18"}) + "\n" + json.dumps({"lang": "sw", "id": 0, "response": "7"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen), "--scorer", "strict"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"benchmark", "scorer", "n", "accuracy", "average", "average_non_en"}
    assert result["accuracy"] == {"sw": 0.0, "en": 100.0} and result["average"] == 50.0 and result["scorer"] == "strict"


def test_user_errors_are_one_line(real_data, tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"lang": "en", "id": 4000, "response": "18"}) + "\n")
    assert main(["score", "--benchmark", "mgsm", "--generations", str(gen)]) == 2
    assert "id 4000 is not a mgsm en question" in capsys.readouterr().err
    assert main(["data", "build", "--task", "x2en_question", "--langs", "bn", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "missing file" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_download_offline_is_a_clear_message(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "qalign_lib.cli", "data", "download", "--out", str(tmp_path / "d"), "--datasets", "mgsm"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "qalign: error:" in r.stderr and "juletxara/mgsm" in r.stderr
