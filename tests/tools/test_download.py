"""qalign_lib.tools.download: normalizers on tiny rows in each source schema (hub rows, QAlign's text files), and download()
failing fast and clearly offline."""
from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qalign_lib.core import benchmarks
from qalign_lib.core.files import DataError
from qalign_lib.core.languages import LANGS, NAMES, NON_EN
from qalign_lib.tools import download

# --- tiny rows in the hub schemas ---------------------------------------------------------------------------------

def mgsm_rows():
    return [{"question": "Janet has 16 eggs.", "answer": None, "answer_number": 18, "equation_solution": None},
            {"question": "A robe takes 2 bolts.", "answer": None, "answer_number": 2125, "equation_solution": None},
            {"question": "A mirror stores text.", "answer": None, "answer_number": "1,000", "equation_solution": None}]


def msvamp_rows(lang: str):
    rows = [{"query": "julia played tag with 18 kids .", "equation": "- number0 number1", "response": "8.0",
             "m_query": " Julia spielte mit 18 Kindern."},
            {"query": "bobby ate 2 candies .", "equation": "+ number0 number1", "response": "2.0",
             "m_query": "Bobby aß 2 Bonbons."}]
    if lang == "en":  # test_English.json has no `query`: m_query is the English question
        rows = [{"m_query": r["query"], "equation": r["equation"], "response": r["response"]} for r in rows]
    return rows


GSM8K_TRAIN = [{"question": "Natalia sold 48 clips in April.", "answer": "48/2 = <<48/2=24>>24\n#### 72"},
               {"question": "Weng earns $12 an hour.  How much?", "answer": "12/60 = <<12/60=0.2>>0.2\n#### 10"},
               {"question": "Betty needs $1,000 for a wallet.", "answer": "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005"}]

COTS = {0: "April: 48/2 = <<48/2=24>>24.\n#### 72", 1: "Rate: <<12/60=0.2>>0.2.\n#### 10",
        2: "Half: <<100/2=50>>50.\n#### 1,005"}


def instruct_row(lang: str, question: str, answer: str) -> dict:
    name = NAMES[lang]
    prompt = (f"Below is an instruction that describes a task. Write a response that appropriately completes the "
              f"request in {name}. Please answer in {name}. \n### Instruction:\n{question}\n\n### Response:")
    return {"prompt": prompt, "chosen": " " + answer + "\n", "rejected": None}


def instruct_rows():
    """Shuffled across and within languages; English whitespace differs from GSM8K's; translated CoTs keep the
    calculator annotations and the final answer. The es row is an untranslated question that mentions "English"."""
    return [instruct_row("de", "Betty braucht 1.000 $.", "Hälfte: <<100/2=50>>50.\n#### 1,005"),
            instruct_row("en", "Weng earns $12 an hour. How much?", COTS[1]),
            instruct_row("fr", "Weng gagne 12 $ par heure.", "Taux : <<12/60=0.2>>0.2.\n#### 10"),
            instruct_row("en", "Betty needs $1,000 for a wallet.", COTS[2]),
            instruct_row("de", "Natalia verkaufte 48 Clips.", "April: 48/2 = <<48/2=24>>24.\n#### 72"),
            instruct_row("es", "Natalia sold 48 clips in April. Answer in English words.",
                         "Abril: 48/2 = <<48/2=24>>24.\n#### 72"),
            instruct_row("en", " Natalia sold 48 clips\nin April. ", COTS[0]),
            instruct_row("ja", "ベティは1,000ドル必要です。", "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005")]


def flores_rows(lang: str, split: str):
    config = download.FLORES_CONFIGS[lang]
    iso, script = config.split("_")
    return [{"id": i, "iso_639_3": iso, "iso_15924": script, "glottocode": "x", "text": f"{lang} {split} sentence {i}",
             "url": "u", "domain": "d", "topic": "t", "has_image": False, "has_hyperlink": False} for i in (2, 0, 1)]


def metamathqa_rows():
    return [{"type": "GSM_Rephrased", "query": "What is 1+1?", "original_question": "1+1?",
             "response": "1+1=2. The answer is: 2"}]


# --- normalizers --------------------------------------------------------------------------------------------------

def test_mgsm_ids_and_answers():
    assert download.normalize_mgsm(mgsm_rows()) == [
        {"id": 0, "question": "Janet has 16 eggs.", "answer": "18", "answer_raw": "18"},
        {"id": 1, "question": "A robe takes 2 bolts.", "answer": "2125", "answer_raw": "2125"},
        {"id": 2, "question": "A mirror stores text.", "answer": "1000", "answer_raw": "1,000"}]


@pytest.mark.parametrize("value,expected", [("2,125", "2125"), ("8.0", "8"), (18, "18"), (18.0, "18"),
                                            ("2.50", "2.5"), ("-3", "-3"), (" 114,200 ", "114200")])
def test_number(value, expected):
    assert download.number(value) == expected


def test_number_rejects_text():
    with pytest.raises(DataError, match="answer_number"):
        download.normalize_mgsm([{"question": "q", "answer_number": "seven"}], "mgsm en")


def test_mgsm_missing_field_is_named():
    with pytest.raises(DataError, match=r"mgsm en row 1: field 'answer_number' is missing"):
        download.normalize_mgsm([mgsm_rows()[0], {"question": "q"}], "mgsm en")
    with pytest.raises(DataError, match=r"field 'question' is a int"):
        download.normalize_mgsm([{"question": 3, "answer_number": 1}])


def test_msvamp():
    assert download.normalize_msvamp(msvamp_rows("de")) == [
        {"id": 0, "question": " Julia spielte mit 18 Kindern.", "answer": "8", "answer_raw": "8.0",
         "equation": "- number0 number1", "question_en": "julia played tag with 18 kids ."},
        {"id": 1, "question": "Bobby aß 2 Bonbons.", "answer": "2", "answer_raw": "2.0",
         "equation": "+ number0 number1", "question_en": "bobby ate 2 candies ."}]
    en = download.normalize_msvamp(msvamp_rows("en"))
    assert [r["question_en"] for r in en] == [r["question"] for r in en] == [
        "julia played tag with 18 kids .", "bobby ate 2 candies ."]


def test_msvamp_missing_field_is_named():
    with pytest.raises(DataError, match=r"field 'response' is missing"):
        download.normalize_msvamp([{"m_query": "q", "equation": "x"}])


def test_gsm8k():
    assert download.normalize_gsm8k(GSM8K_TRAIN)[2] == {
        "id": 2, "question": "Betty needs $1,000 for a wallet.", "answer": "<<100/2=50>>50 <<50+955=1005>>\n#### 1,005",
        "final": "1005"}
    with pytest.raises(DataError, match=r"gsm8k row 0: field 'answer' has no '####"):
        download.normalize_gsm8k([{"question": "q", "answer": "no final line"}])


def test_gsm8kinstruct_aligns_by_content_not_position():
    train = download.normalize_gsm8k(GSM8K_TRAIN)
    inst = download.normalize_gsm8kinstruct(instruct_rows(), train)
    assert inst["en"] == [
        {"id": 0, "gsm8k_idx": 0, "question": "Natalia sold 48 clips\nin April.", "answer": COTS[0]},
        {"id": 1, "gsm8k_idx": 1, "question": "Weng earns $12 an hour. How much?", "answer": COTS[1]},
        {"id": 2, "gsm8k_idx": 2, "question": "Betty needs $1,000 for a wallet.", "answer": COTS[2]}]
    assert [(r["id"], r["question"]) for r in inst["de"]] == [(0, "Natalia verkaufte 48 Clips."),
                                                             (2, "Betty braucht 1.000 $.")]
    assert [(r["id"], r["answer"]) for r in inst["fr"]] == [(1, "Taux : <<12/60=0.2>>0.2.\n#### 10")]
    # filed by the template's language, not by the first language name in the question
    assert [r["id"] for r in inst["es"]] == [0]
    assert inst["bn"] == []
    # a translation of GSM8K's original chain of thought (not MathOctopus's English one) aligns too
    assert [(r["id"], r["question"]) for r in inst["ja"]] == [(2, "ベティは1,000ドル必要です。")]
    assert all(r["gsm8k_idx"] == r["id"] for rows in inst.values() for r in rows)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_gsm8kinstruct_keeps_every_row():
    """Rows that align to no GSM8K id (unknown, or ambiguous) are kept for MultiReason and the mixed setting, after
    the aligned ones, with distinct ids >= UNALIGNED_ID derived from their hub row index; a low share is a warning."""
    train = download.normalize_gsm8k(GSM8K_TRAIN)
    rows = instruct_rows() + [instruct_row("en", "A question that is not in GSM8K.", "<<1+1=2>>2\n#### 2"),
                              instruct_row("de", "Unbekannt.", "<<9*9=81>>81\n#### 81"),
                              instruct_row("fr", "Weng, encore.", "Taux : <<12/60=0.2>>0.2.\n#### 10")]
    handler, logger = _Records(), logging.getLogger("qalign.tools.download")
    logger.addHandler(handler)
    try:
        inst = download.normalize_gsm8kinstruct(rows, train)
    finally:
        logger.removeHandler(handler)
    u = download.UNALIGNED_ID
    assert sum(len(v) for v in inst.values()) == len(rows)  # every row, every language
    assert [r["id"] for r in inst["en"]] == [0, 1, 2, u + 8]
    assert inst["en"][3] == {"id": u + 8, "gsm8k_idx": None, "question": "A question that is not in GSM8K.",
                             "answer": "<<1+1=2>>2\n#### 2"}
    assert [r["id"] for r in inst["de"]] == [0, 2, u + 9]
    # two French rows claim GSM8K row 1: ambiguous, both kept unaligned, in hub order
    assert [(r["id"], r["gsm8k_idx"], r["question"]) for r in inst["fr"]] == [
        (u + 2, None, "Weng gagne 12 $ par heure."), (u + 10, None, "Weng, encore.")]
    assert inst["bn"] == []
    for lang, lrows in inst.items():
        assert len({r["id"] for r in lrows}) == len(lrows), lang
    warned = [r.getMessage() for r in handler.records if r.levelno == logging.WARNING]
    assert any("only 2 of 3 German rows could be aligned" in m and "kept" in m for m in warned)
    assert any("only 0 of 2 French rows" in m for m in warned)
    assert any("only 3 of 4 English rows" in m for m in warned)
    assert not any("Spanish" in m or "Japanese" in m for m in warned)  # all aligned


def test_gsm8kinstruct_malformed_rows():
    train = download.normalize_gsm8k(GSM8K_TRAIN)
    with pytest.raises(DataError, match=r"row 0: field 'chosen' is missing"):
        download.normalize_gsm8kinstruct([{"prompt": instruct_row("en", "q", "a")["prompt"]}], train)
    with pytest.raises(DataError, match=r"row 0: field 'prompt' names no known language"):
        download.normalize_gsm8kinstruct([{"prompt": "### Instruction:\nq\n\n### Response:", "chosen": "a"}], train)
    with pytest.raises(DataError, match=r"row 0: field 'prompt' has no '### Instruction:'"):
        download.normalize_gsm8kinstruct([{"prompt": "Solve q", "chosen": "a"}], train)


# --- QAlign's released question pairs (source schema: line-aligned text files train.{x} / train.en) --------------

# de-en, line by line: whitespace differs from GSM8K's (matched), a line in no GSM8K row (kept), an empty English
# side and a blank German side (both skipped, as gsmtrans.py does), outer whitespace (stripped), a repeated English
# line (kept, with its own id)
QALIGN_DE = ["Weng verdient 12 $ pro Stunde.", "Eine Zeile, die in GSM8K fehlt.", "Leer.", "   ",
             " Natalia verkaufte 48 Clips. ", "Natalia verkaufte im April 48 Clips."]
QALIGN_DE_EN = ["Weng earns $12 an hour. How much?", "A line that is in no GSM8K row.", "",
                "Natalia sold 48 clips in April.", "  Natalia sold 48 clips in April. ",
                "Natalia sold 48 clips in April."]


def qalign_sides(lang: str) -> tuple[list[str], list[str]]:
    if lang == "de":
        return QALIGN_DE, QALIGN_DE_EN
    return ([f"{lang}: Natalia", f"{lang}: Betty"],
            ["Natalia sold 48 clips in April.", "Betty needs $1,000 for a wallet."])


def qalign_tree(root: Path, langs=NON_EN) -> Path:
    """A directory laid out like NJUNLP/QAlign: data/gsmtrans/gsm8kinstruct_question/{x}-en/train.{x,en}."""
    for lang in langs:
        for side, lines in zip((lang, "en"), qalign_sides(lang)):
            path = root / download.qalign_path(lang, side)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
    return root


def test_question_pairs_ids_unmatched_and_empty_lines():
    train, u = download.normalize_gsm8k(GSM8K_TRAIN), download.UNALIGNED_ID
    rows = download.normalize_question_pairs(QALIGN_DE, QALIGN_DE_EN, train, "de")
    assert rows == [
        {"id": 1, "question_en": "Weng earns $12 an hour. How much?", "question": "Weng verdient 12 $ pro Stunde."},
        {"id": u + 1, "question_en": "A line that is in no GSM8K row.", "question": "Eine Zeile, die in GSM8K fehlt."},
        {"id": 0, "question_en": "Natalia sold 48 clips in April.", "question": "Natalia verkaufte 48 Clips."},
        {"id": u + 5, "question_en": "Natalia sold 48 clips in April.",
         "question": "Natalia verkaufte im April 48 Clips."}]
    assert len(rows) == sum(1 for x, en in zip(QALIGN_DE, QALIGN_DE_EN) if x.strip() and en.strip())
    assert download.normalize_question_pairs([], [], train, "bn") == []


def test_question_pairs_unequal_line_counts():
    with pytest.raises(DataError, match=r"gsm8kinstruct_question th-en: train.th has 3 lines but train.en has 2"):
        download.normalize_question_pairs(["a", "b", "c"], ["a", "b"], download.normalize_gsm8k(GSM8K_TRAIN), "th")
    with pytest.raises(DataError, match=r"field 'question' is missing"):
        download.normalize_question_pairs(["a"], ["a"], [{"id": 0, "answer": "x"}], "de")


def test_qalign_lines():
    assert download.qalign_lines(b"a\r\nb\rc\n", "f") == ["a", "b", "c"]  # universal newlines, as Python reads text
    assert download.qalign_lines("a\n\n \nb".encode(), "f") == ["a", "", " ", "b"]
    assert download.qalign_lines(b"", "f") == [] and download.qalign_lines(b"\n", "f") == [""]
    assert download.qalign_lines("x\u2028y\n".encode(), "f") == ["x\u2028y"]  # not a line end for file iteration
    with pytest.raises(DataError, match=r"^train.bn: not UTF-8 text \(byte 1\).*--qalign-repo"):
        download.qalign_lines(b"a\xff\n", "train.bn")
    with pytest.raises(DataError, match=r"Git LFS pointer"):
        download.qalign_lines(b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "train.th")


def test_qalign_urls_are_pinned():
    assert download.qalign_url(download.qalign_path("th", "th")) == (
        "https://raw.githubusercontent.com/NJUNLP/QAlign/a65ee63836e41896466a1b81834d8db0deaf4324/"
        "data/gsmtrans/gsm8kinstruct_question/th-en/train.th")


def test_read_qalign_file_from_a_directory(tmp_path):
    qalign_tree(tmp_path / "QAlign", langs=["de"])
    assert download.read_qalign_file(download.qalign_path("de", "de"), tmp_path / "QAlign").decode().splitlines() == QALIGN_DE
    with pytest.raises(DataError, match=r"qalign-repo .*bn-en/train.bn is not a file there.*not a git repository.*"
                                        r"leave out --qalign-repo to download"):
        download.read_qalign_file(download.qalign_path("bn", "bn"), tmp_path / "QAlign")
    with pytest.raises(DataError, match=r"--qalign-repo .*nowhere: not a directory"):
        download.read_qalign_file(download.qalign_path("de", "de"), tmp_path / "nowhere")


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_read_qalign_file_from_a_bare_git_repository(tmp_path, monkeypatch):
    """A clone without a work tree (bare, or a mirror) is read with git at the pinned commit."""
    try:
        src = qalign_tree(tmp_path / "src", langs=["de"])
        _git("init", "-q", ".", cwd=src)
        _git("add", "-A", cwd=src)
        _git("commit", "-q", "-m", "data", cwd=src)
        commit = _git("rev-parse", "HEAD", cwd=src)
        _git("clone", "-q", "--bare", str(src), str(tmp_path / "bare.git"), cwd=tmp_path)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"git is not usable here: {e}")
    monkeypatch.setattr(download, "QALIGN_COMMIT", commit)
    data = download.read_qalign_file(download.qalign_path("de", "en"), tmp_path / "bare.git")
    assert download.qalign_lines(data, "x") == QALIGN_DE_EN
    (src / download.qalign_path("de", "de")).unlink()  # a work tree without the file: read from its .git
    assert download.qalign_lines(download.read_qalign_file(download.qalign_path("de", "de"), src), "x") == QALIGN_DE
    with pytest.raises(DataError, match=r"th-en/train.th is not a file there, and `git cat-file blob "
                                        + commit + r":data/gsmtrans/gsm8kinstruct_question/th-en/train.th` failed"):
        download.read_qalign_file(download.qalign_path("th", "th"), tmp_path / "bare.git")
    monkeypatch.setattr(download, "QALIGN_COMMIT", "0" * 40)  # a clone without the pinned commit
    with pytest.raises(DataError, match=r"that has commit 0{40}"):
        download.read_qalign_file(download.qalign_path("de", "en"), tmp_path / "bare.git")


@pytest.mark.parametrize("error,reason", [
    (urllib.error.URLError("[Errno -3] Temporary failure in name resolution"), r"unreachable .*name resolution"),
    (TimeoutError("timed out"), r"unreachable .*timed out"),
    (urllib.error.HTTPError("u", 404, "Not Found", {}, None), r"HTTP 404 Not Found \(no such file at that commit\)"),
])
def test_fetch_failure_names_the_url_and_the_fix(monkeypatch, error, reason):
    seen = []

    def fail(url, timeout=None):
        seen.append((url, timeout))
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    url = download.qalign_url(download.qalign_path("bn", "bn"))
    with pytest.raises(DataError) as e:
        download.read_qalign_file(download.qalign_path("bn", "bn"))
    msg = str(e.value)
    assert msg.startswith(f"cannot download {url}: ") and "--qalign-repo DIR" in msg and "git clone" in msg
    assert re.search(reason, msg), msg
    assert "\n" not in msg and e.value.__cause__ is None and e.value.__context__ is None
    assert seen == [(url, download.URL_TIMEOUT)]


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fake_github(root: Path, seen: list):
    """urlopen serving the files of a directory laid out like the repository, at the pinned raw URLs only."""
    prefix = download.QALIGN_RAW_URL.format(repo=download.QALIGN_REPO, commit=download.QALIGN_COMMIT, path="")

    def urlopen(url, timeout=None):
        seen.append(url)
        path = root / url.removeprefix(prefix)
        if not url.startswith(prefix) or not path.is_file():
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return _FakeResponse(path.read_bytes())
    return urlopen


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


@pytest.mark.parametrize("mode", ["github", "qalign_repo"])
def test_download_question_pairs(tmp_path, monkeypatch, mode):
    """gsm8kinstruct_question: all nine languages (bn and th included) from QAlign's files, ids from GSM8K train."""
    tree, seen = qalign_tree(tmp_path / "QAlign"), []
    monkeypatch.setattr(download, "load_rows", lambda src, config, split: GSM8K_TRAIN)
    monkeypatch.setattr(download, "check_reachable", lambda hub_id: None)
    monkeypatch.setattr(urllib.request, "urlopen", _fake_github(tree, seen) if mode == "github" else _no_network)
    out = tmp_path / "data"
    written = download.download(out, datasets=["gsm8kinstruct_question"],
                           qalign_repo=tree if mode == "qalign_repo" else None)
    assert written == {f"gsm8kinstruct_question/{lang}.jsonl": 4 if lang == "de" else 2 for lang in NON_EN}
    if mode == "github":
        assert sorted(seen) == sorted(download.qalign_url(download.qalign_path(lang, side))
                                      for lang in NON_EN for side in (lang, "en"))
    th = [json.loads(line) for line in (out / "gsm8kinstruct_question/th.jsonl").read_text("utf-8").splitlines()]
    assert th == [{"id": 0, "question_en": "Natalia sold 48 clips in April.", "question": "th: Natalia"},
                  {"id": 2, "question_en": "Betty needs $1,000 for a wallet.", "question": "th: Betty"}]
    de = [json.loads(line)["id"] for line in (out / "gsm8kinstruct_question/de.jsonl").read_text("utf-8").splitlines()]
    assert de == [1, download.UNALIGNED_ID + 1, 0, download.UNALIGNED_ID + 5]
    assert not (out / "gsm8k").exists() and not list(out.rglob("*.tmp"))


def test_download_question_pairs_failure_writes_nothing(tmp_path, monkeypatch):
    tree = qalign_tree(tmp_path / "QAlign", langs=[lang for lang in NON_EN if lang != "th"])
    monkeypatch.setattr(download, "load_rows", lambda src, config, split: GSM8K_TRAIN)
    monkeypatch.setattr(download, "check_reachable", lambda hub_id: None)
    monkeypatch.setattr(urllib.request, "urlopen", _fake_github(tree, []))
    with pytest.raises(DataError, match=r"cannot download https://raw.githubusercontent.com/NJUNLP/QAlign/"
                                        r"a65ee63836e41896466a1b81834d8db0deaf4324/.*th-en/train.th: HTTP 404"):
        download.download(tmp_path / "data", datasets=["gsm8kinstruct_question"])
    assert not (tmp_path / "data").exists()
    qalign_tree(tree, langs=["th"])
    (tree / download.qalign_path("de", "de")).write_text("only one line\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"de-en: train.de has 1 lines but train.en has 6"):
        download.download(tmp_path / "data", datasets=["gsm8kinstruct_question"], qalign_repo=tree)


def test_real_reference_files_match_the_snapshot(real_data, reference_mirror):
    """The reference's de-en files, read with git at the pinned commit from a bare mirror of it (named by
    $QALIGN_REFERENCE_MIRROR), normalize to the rows of shared/data/gsm8kinstruct_question/de.jsonl (same ids for the
    same pairs)."""
    if not (reference_mirror / "objects").is_dir():
        pytest.skip(f"QALIGN_REFERENCE_MIRROR={reference_mirror} is not a bare mirror of {download.QALIGN_REPO}")
    try:
        x, en = (download.qalign_lines(download.read_qalign_file(download.qalign_path("de", side), reference_mirror),
                                       f"train.{side}") for side in ("de", "en"))
    except DataError as e:
        pytest.skip(f"the mirror cannot be read: {e}")
    train = [json.loads(line) for line in (real_data / "gsm8k/train.jsonl").read_text("utf-8").splitlines()]
    rows = download.normalize_question_pairs(x, en, train, "de")
    assert len(rows) == sum(1 for a, b in zip(x, en) if a.strip() and b.strip()) == 7464
    shared = [json.loads(line) for line in
              (real_data / "gsm8kinstruct_question/de.jsonl").read_text("utf-8").splitlines()]
    by_pair = {(r["question_en"], r["question"]): r["id"] for r in shared}
    both = [(r["id"], by_pair[key]) for r in rows if (key := (r["question_en"], r["question"])) in by_pair]
    assert len(both) == len(shared) and all(a == b for a, b in both)
    assert all(r["id"] < download.UNALIGNED_ID for r in rows)


def test_flores_orders_by_id_and_checks_alignment():
    out = download.normalize_flores({lang: flores_rows(lang, "dev") for lang in ("en", "zh")})
    assert out == {"en": ["en dev sentence 0", "en dev sentence 1", "en dev sentence 2"],
                   "zh": ["zh dev sentence 0", "zh dev sentence 1", "zh dev sentence 2"]}
    with pytest.raises(DataError, match=r"flores de: field 'id' values differ"):
        download.normalize_flores({"en": flores_rows("en", "dev"), "de": flores_rows("de", "dev")[:2]})
    wrong = [dict(r, iso_639_3="zho") for r in flores_rows("zh", "dev")]
    with pytest.raises(DataError, match=r"'iso_639_3'/'iso_15924' say zho_Hans, expected cmn_Hans"):
        download.normalize_flores({"zh": wrong})
    broken = [dict(r, text="two\nlines") for r in flores_rows("en", "dev")]
    with pytest.raises(DataError, match=r"field 'text' contains a line break"):
        download.normalize_flores({"en": broken})
    with pytest.raises(DataError, match=r"field 'id' is missing"):
        download.normalize_flores({"en": [{"text": "x"}]})


def test_metamathqa():
    assert download.normalize_metamathqa(metamathqa_rows()) == [
        {"id": 0, "query": "What is 1+1?", "response": "1+1=2. The answer is: 2", "type": "GSM_Rephrased"}]
    with pytest.raises(DataError, match=r"field 'type' is missing"):
        download.normalize_metamathqa([{"query": "q", "response": "r"}])


def test_sources_cover_the_language_registry():
    assert list(download.SOURCES["mgsm"].configs) == list(benchmarks.get("mgsm").langs)
    assert list(download.SOURCES["msvamp"].configs) == list(benchmarks.get("msvamp").langs) == list(LANGS)
    assert set(download.FLORES_CONFIGS) == set(LANGS)
    assert set(download.DATASETS) == set(download.SOURCES) | {"gsm8kinstruct_question"}


# --- same fields as the real normalized files ---------------------------------------------------------------------

def _real_fields(root, rel: str) -> list[str]:
    with (root / rel).open(encoding="utf-8") as f:
        return list(json.loads(f.readline()))


def test_fields_match_real_files(real_data):
    inst = download.normalize_gsm8kinstruct(instruct_rows(), download.normalize_gsm8k(GSM8K_TRAIN))
    pairs = download.normalize_question_pairs(QALIGN_DE, QALIGN_DE_EN, download.normalize_gsm8k(GSM8K_TRAIN), "de")
    produced = {"mgsm/en.jsonl": download.normalize_mgsm(mgsm_rows()),
                "msvamp/en.jsonl": download.normalize_msvamp(msvamp_rows("en")),
                "msvamp/de.jsonl": download.normalize_msvamp(msvamp_rows("de")),
                "gsm8k/train.jsonl": download.normalize_gsm8k(GSM8K_TRAIN),
                "gsm8kinstruct/en.jsonl": inst["en"],
                "gsm8kinstruct_question/de.jsonl": pairs}
    for rel, rows in produced.items():
        assert all(list(r) == _real_fields(real_data, rel) for r in rows), rel


# --- download -----------------------------------------------------------------------------------------------------

def test_download_offline_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DataError) as e:
        download.download(tmp_path / "data", datasets=["mgsm"])
    msg = str(e.value)
    assert time.time() - t0 < 30
    assert "juletxara/mgsm" in msg and "offline" in msg and "QALIGN_DATA_DIR" in msg and "internet" in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert not (tmp_path / "data" / "mgsm").exists()


def test_download_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    t0 = time.time()
    with pytest.raises(DataError, match=r"cannot download openai/gsm8k .*unreachable.*QALIGN_DATA_DIR"):
        download.download(tmp_path, datasets=["gsm8k"])
    assert time.time() - t0 < 15


def test_download_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset\(s\) mmlu; known: mgsm, msvamp"):
        download.download(tmp_path, datasets=["mmlu"])
    with pytest.raises(DataError, match=r"known: .*gsm8kinstruct, gsm8kinstruct_question, flores"):
        download.download(tmp_path, datasets=["gsm8kinstruct_questions"])


def test_download_writes_the_layout(tmp_path, monkeypatch):
    """download() with the hub replaced by the fixtures above: paths, contents, and one load per split."""
    calls = []

    def fake_load(src, config, split):
        calls.append((src.hub_id, config, split))
        key = next(k for k, s in download.SOURCES.items() if s is src)
        if key == "mgsm":
            return mgsm_rows()
        if key == "msvamp":
            return msvamp_rows(next(lang for lang in LANGS if NAMES[lang] == config))
        if key == "gsm8k":
            return GSM8K_TRAIN
        if key == "gsm8kinstruct":
            return instruct
        if key == "flores":
            return flores_rows(next(lang for lang, c in download.FLORES_CONFIGS.items() if c == config), split)
        return metamathqa_rows()

    instruct = instruct_rows() + [instruct_row(lang, f"{lang} q", COTS[0])
                                  for lang in ("bn", "th", "sw", "ja", "zh", "ru")]
    instruct.append(instruct_row("sw", "Swali lisilo na jozi.", "<<7*7=49>>49\n#### 49"))  # aligns to nothing: kept
    monkeypatch.setattr(download, "load_rows", fake_load)
    monkeypatch.setattr(download, "check_reachable", lambda hub_id: None)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    written = download.download(tmp_path, datasets=["mgsm", "gsm8kinstruct", "flores", "metamathqa"])
    assert written["mgsm/te.jsonl"] == 3 and written["gsm8kinstruct/en.jsonl"] == 3
    assert sum(written[f"gsm8kinstruct/{lang}.jsonl"] for lang in LANGS) == len(instruct)  # every row kept
    assert written["gsm8kinstruct/sw.jsonl"] == 2
    assert not any(rel.startswith("gsm8kinstruct_question/") for rel in written) and "gsm8k/train.jsonl" not in written
    assert ("openai/gsm8k", "main", "train") in calls and ("openai/gsm8k", "main", "test") not in calls
    assert len(calls) == len(set(calls)) == 11 + 2 + 20 + 1
    lines = (tmp_path / "flores/devtest/zh.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["zh devtest sentence 0", "zh devtest sentence 1", "zh devtest sentence 2"]
    first = json.loads((tmp_path / "mgsm/en.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert first == {"id": 1, "question": "A robe takes 2 bolts.", "answer": "2125", "answer_raw": "2125"}
    assert not list(tmp_path.rglob("*.tmp"))
