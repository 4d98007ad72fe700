"""`qalign data download`: fetch the public sources and write the normalized layout.

The layout is the one described in shared/data/MANIFEST.md (mgsm/, msvamp/, gsm8k/, gsm8kinstruct/,
gsm8kinstruct_question/, flores/{dev,devtest}/, metamathqa/). Three parts:

* SOURCES: which hub dataset, config, data files and splits each dataset key is read from (data, not code); the
  stage-1 question pairs (gsm8kinstruct_question) are QAlign's own released files instead, read from GitHub at a
  pinned commit (QALIGN_COMMIT) or from a local clone (`--qalign-repo DIR`);
* pure normalizers: lists of source rows (dicts, or lines) in, normalized rows out; they raise DataError naming the
  field;
* download(): loads, normalizes and writes every file atomically.

Ids. Rows that correspond to a GSM8K train row have that row's index as `id` (so languages align by id). Rows that
do not (a GSM8KInstruct row whose chain of thought matches no GSM8K row, a QAlign line whose English side is not a
GSM8K question) are kept, with an id >= UNALIGNED_ID (1,000,000): UNALIGNED_ID + the row's index in the hub file, or
+ its 0-based line number in QAlign's files. They stay integers because data.load() builds a pyarrow table, which
cannot hold a column of ints mixed with strings.

Hub schemas. "confirmed": seen in the dataset card / file listing / viewer or in public code reading the data;
"ASSUMED": the most likely form, not seen (the Hub was unreachable from where this was written).
* juletxara/mgsm: one config per language (en es fr de ru zh ja th sw bn te), splits train (8) / test (250), fields
  question / answer (None in test) / answer_number (int) / equation_solution (confirmed, via the loading script's
  features and mirrors' cards). The repo is a loading script, which datasets>=4 cannot run, so we read the Hub's
  parquet export; its path {config}/{split}/*.parquet on refs/convert/parquet is ASSUMED (per-config folders confirmed).
  The int answer_number has lost the TSV's thousands commas, so answer_raw is "2125" where shared/data has "2,125".
* Mathoctopus/MSVAMP: files test_{Language}.json (confirmed), JSON lines with m_query (question in that language),
  query (English; absent from test_English.json), equation, response ("8.0") (confirmed from the identical copies
  in microsoft/MathOctopus).
* openai/gsm8k: config main, splits train (7473) / test (1319), fields question / answer (confirmed).
* NJUNLP/QAlign @ QALIGN_COMMIT: data/gsmtrans/gsm8kinstruct_question/{x}-en/train.{x} and train.en, line-aligned
  plain text, one question per line (confirmed for the train.en of all nine languages and train.{x} of de es fr ja ru
  sw zh, read from a snapshot of the repository; train.bn and train.th are listed in its tree, their content was not
  seen). These are the paper's stage-1 data: QAlign filtered them (e.g. ru 7,360, zh 7,363, bn 6,525 lines).
* Mathoctopus/GSM8KInstruct_Parallel: one file MGSM8KInstruct_Parallel.json, default config, split train (confirmed);
  rows prompt / chosen (/ rejected) (confirmed from scripts that read the file). The prompt is MathOctopus's
  template "... completes the request in {Language}. Please answer in {Language}. \\n### Instruction:\\n{question}
  \\n\\n### Response:" (confirmed in MathOctopus's README; exact whitespace ASSUMED, parsing tolerates it). That the
  rows carry no index and no parallel key is ASSUMED; see normalize_gsm8kinstruct for how rows are aligned.
* openlanguagedata/flores_plus (gated: accept its terms and log in): one config per language, e.g. eng_Latn, splits
  dev / devtest, fields id / iso_639_3 / iso_15924 / text / ... (confirmed). Chinese is cmn_Hans there (confirmed in a
  public script; zho_Hans in FLORES-200); swh_Latn for Swahili is ASSUMED (FLORES-200's code).
* meta-math/MetaMathQA: MetaMathQA-395K.json, split train, fields type / query / original_question / response
  (confirmed from the file listing and mirrors' cards).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from tqdm.auto import tqdm

from qalign_lib.core import benchmarks, log
from qalign_lib.core.errors import DataError
from qalign_lib.core.files import atomic_write, write_jsonl
from qalign_lib.core.languages import LANGS, NAMES, NON_EN

# -----------------------------------------------------------------------------
# sources (data)


@dataclass(frozen=True)
class Source:
    hub_id: str
    splits: tuple[str, ...]
    configs: dict[str, str | None]  # our key (language code, or "" when single) -> hub config / file stem
    data_files: str | None = None   # when set: file pattern inside the repo, formatted with {config} and {split}
    revision: str | None = None


FLORES_CONFIGS = {"en": "eng_Latn", "bn": "ben_Beng", "th": "tha_Thai", "sw": "swh_Latn", "ja": "jpn_Jpan",
                  "zh": "cmn_Hans", "de": "deu_Latn", "fr": "fra_Latn", "ru": "rus_Cyrl", "es": "spa_Latn"}

SOURCES: dict[str, Source] = {
    "mgsm": Source("juletxara/mgsm", ("test",), {lang: lang for lang in benchmarks.get("mgsm").langs},
                   data_files="{config}/{split}/*.parquet", revision="refs/convert/parquet"),
    "msvamp": Source("Mathoctopus/MSVAMP", ("test",), {lang: NAMES[lang] for lang in benchmarks.get("msvamp").langs},
                     data_files="test_{config}.json"),
    "gsm8k": Source("openai/gsm8k", ("train", "test"), {"": "main"}),
    "gsm8kinstruct": Source("Mathoctopus/GSM8KInstruct_Parallel", ("train",), {"": None}),
    "flores": Source("openlanguagedata/flores_plus", ("dev", "devtest"), FLORES_CONFIGS),
    "metamathqa": Source("meta-math/MetaMathQA", ("train",), {"": None}),
}
MIN_ALIGNED = 0.9  # a GSM8KInstruct language where fewer rows than this find their GSM8K row gets a warning
UNALIGNED_ID = 1_000_000  # ids of rows that correspond to no GSM8K train row start here (see the module docstring)

# QAlign's released stage-1 question pairs (dataset key gsm8kinstruct_question), for x in NON_EN (bn and th included)
QALIGN_REPO = "NJUNLP/QAlign"
QALIGN_COMMIT = "a65ee63836e41896466a1b81834d8db0deaf4324"
QALIGN_QUESTION_PATH = "data/gsmtrans/gsm8kinstruct_question/{lang}-en/train.{side}"
QALIGN_RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
URL_TIMEOUT = 60.0  # seconds without data before a GitHub download gives up

# every dataset key `download` knows: the hub ones, plus QAlign's question pairs after gsm8kinstruct
DATASETS = (*benchmarks.NAMES, "gsm8k", "gsm8kinstruct", "gsm8kinstruct_question", "flores", "metamathqa")

# -----------------------------------------------------------------------------
# normalizers (pure: hub rows in, normalized rows out)


def _field(row: dict, name: str, i: int, what: str, kind: type | tuple = str):
    value = row.get(name) if isinstance(row, dict) else None
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        got = "missing" if value is None else f"a {type(value).__name__}"
        want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{what} row {i}: field {name!r} is {got}; expected {want}")
    return value


def number(value, where: str = "answer") -> str:
    """Gold answer as a plain number string: "2,125" -> "2125", "8.0" -> "8", 18 -> "18", "2.50" -> "2.5"."""
    text = str(value).strip().replace(",", "")
    try:
        d = Decimal(text)
    except InvalidOperation:
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not d.is_finite():
        raise DataError(f"{where}: {value!r} is not a finite number")
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def normalize_mgsm(rows: list[dict], what: str = "mgsm") -> list[dict]:
    """juletxara/mgsm test rows -> {id (row order), question, answer, answer_raw}."""
    out = []
    for i, r in enumerate(rows):
        raw = _field(r, "answer_number", i, what, (int, float, str))
        out.append({"id": i, "question": _field(r, "question", i, what),
                    "answer": number(raw, f"{what} row {i}: field 'answer_number'"), "answer_raw": str(raw)})
    return out


def normalize_msvamp(rows: list[dict], what: str = "msvamp") -> list[dict]:
    """Mathoctopus/MSVAMP rows -> {id, question, answer, answer_raw, equation, question_en}.

    question keeps the source's m_query verbatim (some have a leading space); question_en is the English `query`,
    which test_English.json does not have (there m_query is the English question)."""
    out = []
    for i, r in enumerate(rows):
        question = _field(r, "m_query", i, what)
        raw = _field(r, "response", i, what, (str, int, float))
        out.append({"id": i, "question": question,
                    "answer": number(raw, f"{what} row {i}: field 'response'"), "answer_raw": str(raw),
                    "equation": _field(r, "equation", i, what),
                    "question_en": _field(r, "query", i, what) if "query" in r else question})
    return out


def gsm8k_final(answer: str, where: str = "gsm8k") -> str:
    if "####" not in answer:
        raise DataError(f"{where}: field 'answer' has no '#### <final answer>' line")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def normalize_gsm8k(rows: list[dict], what: str = "gsm8k") -> list[dict]:
    """openai/gsm8k rows -> {id (row index), question, answer (original text), final}."""
    out = []
    for i, r in enumerate(rows):
        answer = _field(r, "answer", i, what)
        out.append({"id": i, "question": _field(r, "question", i, what), "answer": answer,
                    "final": gsm8k_final(answer, f"{what} row {i}")})
    return out


def normalize_metamathqa(rows: list[dict], what: str = "metamathqa") -> list[dict]:
    return [{"id": i, "query": _field(r, "query", i, what), "response": _field(r, "response", i, what),
             "type": _field(r, "type", i, what)} for i, r in enumerate(rows)]


_LANG_OF_NAME = {NAMES[lang].lower(): lang for lang in LANGS}


def parse_instruct_row(r: dict, i: int, what: str = "gsm8kinstruct") -> tuple[str, str, str]:
    """One MGSM8KInstruct_Parallel row -> (language code, question, answer).

    The language is read from the template's header ("completes the request in German"), never from the question:
    QAlign's extraction took the first language name anywhere in the prompt and filed 3 Spanish/French rows whose
    question mentions "English" under English."""
    prompt, answer = _field(r, "prompt", i, what), _field(r, "chosen", i, what)
    if "Instruction:" not in prompt:
        raise DataError(f"{what} row {i}: field 'prompt' has no '### Instruction:' section")
    header, body = prompt.split("Instruction:", 1)
    m = re.search(r"(?:request|answer) in ([A-Za-z]+)", header)
    if not m or m.group(1).lower() not in _LANG_OF_NAME:
        raise DataError(f"{what} row {i}: field 'prompt' names no known language ('... request in <Language>')")
    return _LANG_OF_NAME[m.group(1).lower()], body.split("### Response:", 1)[0].strip(), answer.strip()


def _ws(text: str) -> str:
    return " ".join(text.split())


def _fingerprint(answer: str) -> tuple:
    """Language-independent key of a chain of thought: its <<calculator>> annotations and its final answer."""
    calcs = tuple(re.sub(r"\s+", "", c) for c in re.findall(r"<<(.*?)>>", answer))
    final = answer.rsplit("####", 1)[1].strip().replace(",", "").replace(" ", "") if "####" in answer else None
    return calcs, final


def _unique(pairs) -> dict:
    """{key: value} from (key, value) pairs, leaving out every key that occurs more than once (ambiguous)."""
    seen: dict = {}
    for k, v in pairs:
        seen.setdefault(k, []).append(v)
    return {k: vs[0] for k, vs in seen.items() if len(vs) == 1}


def _gsm8k_question_ids(gsm8k_train: list[dict]) -> dict[str, int]:
    """{whitespace-normalised question: id} of the normalized gsm8k train rows, for the questions that occur once."""
    return _unique((_ws(_field(g, "question", j, "gsm8k train")), _field(g, "id", j, "gsm8k train", int))
                   for j, g in enumerate(gsm8k_train))


def _claimed_once(keys: list) -> list:
    """One GSM8K id (or None) per row -> the same, with None for every id that several rows claim (ambiguous)."""
    counts: dict = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return [k if k is not None and counts[k] == 1 else None for k in keys]


def normalize_gsm8kinstruct(rows: list[dict], gsm8k_train: list[dict], min_aligned: float = MIN_ALIGNED,
                            what: str = "gsm8kinstruct") -> dict[str, list[dict]]:
    """MGSM8KInstruct_Parallel rows -> {lang: [{id, gsm8k_idx, question, answer}]}: every row of every language.

    Rows aligned to a GSM8K train row come first, ordered by id = gsm8k_idx = that row's index; every other row
    follows in hub order with id = UNALIGNED_ID + its index in the hub file and gsm8k_idx None. MultiReason and the
    mixed setting train on all of them; the x2en/en2x response tasks pair languages by id, so they use the aligned
    ones. The hub rows carry no index, so alignment is by content, never by position:
    * English: the question is matched to its gsm8k train row (normalized rows with id/question) by exact match
      after whitespace normalisation;
    * other languages: the chain of thought is a translation of an English one, which keeps its <<a*b=c>>
      calculator annotations and its "#### N" final answer; that pair is the parallel key, matched against both
      English chains of thought of each row: MathOctopus's (aligned above) and GSM8K's original (gsm8k train
      `answer`; only 1757 of 7473 are identical, and which one was translated is not documented). Keys shared by
      several GSM8K rows, and ids claimed by several rows of one language, are ambiguous: those rows stay unaligned.
    A language where fewer than `min_aligned` of its rows align is logged as a warning (the hub file's format may
    have changed); nothing is dropped.
    """
    by_lang: dict[str, list[tuple[int, str, str]]] = {lang: [] for lang in LANGS}
    for i, r in enumerate(rows):
        lang, q, a = parse_instruct_row(r, i, what)
        by_lang[lang].append((i, q, a))

    gsm = [(_field(g, "id", j, "gsm8k train", int), _field(g, "answer", j, "gsm8k train"))
           for j, g in enumerate(gsm8k_train)]
    gsm_id = _gsm8k_question_ids(gsm8k_train)
    ids = {"en": _claimed_once([gsm_id.get(_ws(q)) for _, q, _ in by_lang["en"]])}
    cots = gsm + [(k, a) for k, (_, _, a) in zip(ids["en"], by_lang["en"]) if k is not None]
    en_id = _unique({(_fingerprint(a), i) for i, a in cots})  # a set: the same key twice for one id is no clash
    for lang in NON_EN:
        ids[lang] = _claimed_once([en_id.get(_fingerprint(a)) for _, _, a in by_lang[lang]])

    out, logger = {}, log.get(__name__)
    for lang in LANGS:
        pairs = list(zip(ids[lang], by_lang[lang]))
        aligned = sorted(((k, q, a) for k, (_, q, a) in pairs if k is not None), key=lambda t: t[0])
        rest = [(UNALIGNED_ID + i, q, a) for k, (i, q, a) in pairs if k is None]
        n, total = len(aligned), len(pairs)
        if total and n < min_aligned * total:
            logger.warning("%s: only %d of %d %s rows could be aligned to a GSM8K train row (expected %.0f%%): all "
                           "are kept, but the x2en/en2x response tasks pair only the aligned ones. Rows are matched "
                           "by the <<calculator>> annotations and '#### N' of their chain of thought (English: by "
                           "question text); the hub file's format may have changed", what, n, total, NAMES[lang],
                           100 * min_aligned)
        elif rest:
            logger.info("%s %s: %d of %d rows aligned to a GSM8K train row; the other %d kept with ids >= %d",
                        what, lang, n, total, len(rest), UNALIGNED_ID)
        out[lang] = ([{"id": k, "gsm8k_idx": k, "question": q, "answer": a} for k, q, a in aligned]
                     + [{"id": k, "gsm8k_idx": None, "question": q, "answer": a} for k, q, a in rest])
    return out


def normalize_question_pairs(x_lines: list[str], en_lines: list[str], gsm8k_train: list[dict], lang: str,
                             what: str | None = None) -> list[dict]:
    """QAlign's train.{lang} and train.en lines (line-aligned) -> gsm8kinstruct_question rows {id, question_en,
    question}, in line order.

    As QAlign's loader (data/gsmtrans/gsmtrans.py:126-139 @ a65ee63, the `{x}-en` config) does: the two files are
    read pairwise, each line stripped, and a pair where either side is empty after strip() is skipped
    (gsmtrans.py:129 `if len(source_line.strip()) > 0 and len(target_line.strip()) > 0`); every other pair is trained
    on. (The released files have no such lines, nor lines with outer whitespace: all nine train.en and seven
    train.{x} checked.) Unlike gsmtrans.py, which zips and so silently drops the tail of the longer file, unequal
    line counts are an error.

    id: the GSM8K train row whose question equals the train.en line after whitespace normalisation (as MANIFEST.md
    describes the offline snapshot; there every line matched). A line that matches none (or a GSM8K question that
    occurs twice), and a repeat of an English line already given its id, is kept, with id UNALIGNED_ID + its
    0-based line number: the reference trains on every line, and the question tasks need an id only to be unique.
    """
    what = what or f"{QALIGN_REPO} gsm8kinstruct_question {lang}-en"
    if len(x_lines) != len(en_lines):
        raise DataError(f"{what}: train.{lang} has {len(x_lines)} lines but train.en has {len(en_lines)}; the two "
                        f"files must be line-aligned (one question per line). Re-download them, both from the same "
                        f"commit ({QALIGN_COMMIT})")
    gsm_id = _gsm8k_question_ids(gsm8k_train)
    out, used = [], set()
    for k, (x, en) in enumerate(zip(x_lines, en_lines)):
        x, en = x.strip(), en.strip()
        if not x or not en:  # gsmtrans.py:129
            continue
        i = gsm_id.get(_ws(en))
        if i is None or i in used:
            i = UNALIGNED_ID + k
        else:
            used.add(i)
        out.append({"id": i, "question_en": en, "question": x})
    return out


def _id(r: dict, i: int, where: str) -> int:
    value = _field(r, "id", i, where, (int, str))
    if isinstance(value, str) and not value.strip().isdigit():
        raise DataError(f"{where} row {i}: field 'id' is {value!r}, not an integer")
    return int(value)


def normalize_flores(rows: dict[str, list[dict]], configs: dict[str, str] = FLORES_CONFIGS,
                     what: str = "flores") -> dict[str, list[str]]:
    """{lang: flores_plus rows} -> {lang: sentences}, ordered by the rows' `id` and checked to be line-aligned."""
    out, ids0 = {}, None
    for lang, lrows in rows.items():
        where = f"{what} {lang}"
        keyed = sorted(((_id(r, i, where), _field(r, "text", i, where), r) for i, r in enumerate(lrows)),
                       key=lambda t: t[0])
        for i, text, r in keyed:
            code = f"{r.get('iso_639_3')}_{r.get('iso_15924')}"
            if "iso_639_3" in r and code != configs[lang]:
                raise DataError(f"{where} id {i}: fields 'iso_639_3'/'iso_15924' say {code}, expected {configs[lang]}")
            if "\n" in text or "\r" in text:
                raise DataError(f"{where} id {i}: field 'text' contains a line break")
        ids = [i for i, _, _ in keyed]
        if len(set(ids)) != len(ids):
            raise DataError(f"{where}: duplicate values in field 'id'")
        if ids0 is not None and ids != ids0:
            raise DataError(f"{where}: field 'id' values differ from the other languages; the files would not align")
        ids0 = ids
        out[lang] = [text for _, text, _ in keyed]
    return out


# -----------------------------------------------------------------------------
# loading from the hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _offline() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


FIX = ("Fix: run `qalign data download` on a machine with internet access, or copy an existing normalized data "
       "directory (e.g. shared/data, see its MANIFEST.md) to this machine and point QALIGN_DATA_DIR at it.")


def _hub_error(hub_id: str, reason: str) -> DataError:
    return DataError(f"cannot download {hub_id} from the Hugging Face Hub: {reason}. {FIX}")


def check_reachable(hub_id: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes of retries, when the Hub cannot be reached (skipped in offline mode)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(f"{endpoint}/api/datasets/{hub_id}", timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _hub_error(hub_id, f"{endpoint}/datasets/{hub_id} does not exist (HTTP 404)") from None
        # 401/403/5xx: let load_dataset try (gated repos may still load with a token) and report its error
    except (OSError, ValueError) as e:  # URLError, timeouts, DNS and proxy errors are all OSError
        raise _hub_error(hub_id, f"{endpoint} is unreachable ({getattr(e, 'reason', e)})") from None


@contextlib.contextmanager
def _offline_flags():
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import; honour the value it has now."""
    import datasets
    import huggingface_hub.constants as hc
    saved = hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    if _offline():
        hc.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def load_rows(src: Source, config: str | None, split: str) -> list[dict]:
    """One split of one config as a list of dicts. Every failure becomes a one-paragraph DataError."""
    import datasets

    kwargs = {"revision": src.revision}
    if src.data_files:
        kwargs["data_files"] = {split: src.data_files.format(config=config, split=split)}
    else:
        kwargs["name"] = config
    what = f"{src.hub_id} ({', '.join(x for x in (config, split) if x)})"
    try:
        with _offline_flags():
            return datasets.load_dataset(src.hub_id, split=split, **kwargs).to_list()
    except Exception as e:  # noqa: BLE001 -- no traceback from deep inside datasets reaches the user
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        if "gated" in msg.lower() or type(e).__name__ == "GatedRepoError":
            raise DataError(f"cannot download {what}: the dataset is gated. Accept its terms at "
                            f"https://huggingface.co/datasets/{src.hub_id} and log in (`hf auth login` or HF_TOKEN), "
                            f"then retry. {FIX}") from None
        if _offline():
            raise _hub_error(what, "offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local cache") from None
        if isinstance(e, (ConnectionError, TimeoutError)) or re.search(r"Connect|Timeout", type(e).__name__):
            raise _hub_error(what, f"the Hub is unreachable ({msg})") from None
        raise DataError(f"cannot load {what} from the Hugging Face Hub: {type(e).__name__}: {msg}. "
                        f"The hub dataset may have changed format. {FIX}") from None


# -----------------------------------------------------------------------------
# QAlign's released files: from GitHub at QALIGN_COMMIT, or from a local clone (--qalign-repo DIR)


def qalign_path(lang: str, side: str) -> str:
    """Path inside NJUNLP/QAlign of one side (`lang` or "en") of the {lang}-en question pairs."""
    return QALIGN_QUESTION_PATH.format(lang=lang, side=side)


def qalign_url(path: str) -> str:
    return QALIGN_RAW_URL.format(repo=QALIGN_REPO, commit=QALIGN_COMMIT, path=path)


QALIGN_FIX = (f"Fix: check this machine's internet access (a proxy is taken from HTTPS_PROXY), or clone the "
              f"repository where there is internet (`git clone https://github.com/{QALIGN_REPO} DIR && git -C DIR "
              f"checkout {QALIGN_COMMIT}`), copy DIR here and pass `--qalign-repo DIR`; or copy an existing "
              f"normalized data directory and point QALIGN_DATA_DIR at it.")


def fetch_url(url: str, timeout: float = URL_TIMEOUT) -> bytes:
    """The bytes at `url`; every failure is one DataError naming the URL and the fix."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}" + (" (no such file at that commit)" if e.code == 404 else "")
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, DNS, proxy, cut connection
        detail = getattr(e, "reason", None) or e or type(e).__name__
        reason = f"the server is unreachable or the transfer failed ({detail})"
    raise DataError(f"cannot download {url}: {reason}. {QALIGN_FIX}")


def _git_blob(root: Path, path: str) -> bytes:
    """`path` at QALIGN_COMMIT from the git repository `root` (bare, or a work tree without that file)."""
    spec = f"{QALIGN_COMMIT}:{path}"
    git_dir = root / ".git" if (root / ".git").exists() else root  # never a repository above root
    try:
        r = subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "blob", spec], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"--qalign-repo {root}: {path} is not a file there, and git could not be run to read it "
                        f"from the repository ({e}). Fix: pass a checkout of {QALIGN_REPO} at commit "
                        f"{QALIGN_COMMIT}, or leave out --qalign-repo to download the file from GitHub") from None
    if r.returncode != 0:
        err = " ".join(r.stderr.decode("utf-8", "replace").split())[:300]
        raise DataError(f"--qalign-repo {root}: {path} is not a file there, and `git cat-file blob {spec}` failed "
                        f"({err}). Fix: pass a clone or checkout of {QALIGN_REPO} that has commit {QALIGN_COMMIT} "
                        f"with this file (`git clone https://github.com/{QALIGN_REPO}`), or leave out --qalign-repo "
                        f"to download the file from GitHub")
    return r.stdout


def read_qalign_file(path: str, repo: str | os.PathLike | None = None) -> bytes:
    """One file of NJUNLP/QAlign at QALIGN_COMMIT: downloaded from GitHub (repo None), or read from the local
    directory `repo`: the file `repo/path` when it exists (a checkout or a plain copy of the files), else the blob at
    QALIGN_COMMIT from the git repository `repo` (a bare clone or mirror has no work tree)."""
    if repo is None:
        return fetch_url(qalign_url(path))
    root = Path(repo).expanduser()
    if not root.is_dir():
        raise DataError(f"--qalign-repo {root}: not a directory. Pass a clone (or a copy of the files) of "
                        f"{QALIGN_REPO}, or leave out --qalign-repo to download the files from GitHub")
    file = root / path
    if file.is_file():
        try:
            return file.read_bytes()
        except OSError as e:
            raise DataError(f"--qalign-repo {root}: {file} cannot be read ({e.strerror})") from None
    return _git_blob(root, path)


def qalign_lines(data: bytes, where: str) -> list[str]:
    """A QAlign text file's lines, split as Python's text-mode iteration in gsmtrans.py splits them (universal
    newlines: \\n, \\r\\n, \\r), without line ends; a final newline does not make an extra line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte {e.start}); the file is damaged or is not QAlign's. "
                        f"{QALIGN_FIX}") from None
    if text.startswith("version https://git-lfs"):
        raise DataError(f"{where}: is a Git LFS pointer, not the file's content. {QALIGN_FIX}")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


# -----------------------------------------------------------------------------
# download


def _outputs(key: str, fetch, read_file) -> dict[str, list]:
    """{relative path: rows (.jsonl) or lines (.txt)} of one dataset key; fetch(key, lang, split) -> hub rows,
    read_file(path) -> the lines of a file of NJUNLP/QAlign."""
    if key in benchmarks.REGISTRY:
        b, normalize = benchmarks.get(key), {"mgsm": normalize_mgsm, "msvamp": normalize_msvamp}[key]
        return {b.path.format(lang=lang): normalize(fetch(key, lang, "test"), f"{key} {lang}") for lang in b.langs}
    if key == "gsm8k":
        return {f"gsm8k/{s}.jsonl": normalize_gsm8k(fetch(key, "", s), f"gsm8k {s}") for s in ("train", "test")}
    if key == "gsm8kinstruct":
        train = normalize_gsm8k(fetch("gsm8k", "", "train"), "gsm8k train")
        inst = normalize_gsm8kinstruct(fetch(key, "", "train"), train)
        return {f"gsm8kinstruct/{lang}.jsonl": inst[lang] for lang in LANGS}
    if key == "gsm8kinstruct_question":
        train = normalize_gsm8k(fetch("gsm8k", "", "train"), "gsm8k train")
        return {f"gsm8kinstruct_question/{lang}.jsonl": normalize_question_pairs(
            read_file(qalign_path(lang, lang)), read_file(qalign_path(lang, "en")), train, lang) for lang in NON_EN}
    if key == "flores":
        return {f"flores/{s}/{lang}.txt": lines for s in ("dev", "devtest")
                for lang, lines in normalize_flores({lang: fetch(key, lang, s) for lang in LANGS}).items()}
    if key == "metamathqa":
        return {"metamathqa/metamathqa.jsonl": normalize_metamathqa(fetch(key, "", "train"))}
    raise DataError(f"unknown dataset {key!r}; known: {', '.join(DATASETS)}")


def download(out_dir: str | os.PathLike, datasets: list[str] | None = None,
             qalign_repo: str | os.PathLike | None = None) -> dict[str, int]:
    """Fetch, normalize and write the datasets (default: all of DATASETS) under out_dir.

    The hub datasets come from the Hugging Face Hub; gsm8kinstruct_question comes from QAlign's released files,
    downloaded from GitHub at QALIGN_COMMIT, or read from `qalign_repo` (a clone, checkout or copy of NJUNLP/QAlign;
    the CLI's --qalign-repo) when given. Returns {relative path: rows written}. Each dataset is complete in memory
    before any of its files is written, and every file is written atomically. Raises DataError (one paragraph, with
    the fix) on any failure."""
    keys = list(DATASETS) if datasets is None else list(dict.fromkeys(datasets))
    unknown = [k for k in keys if k not in DATASETS]
    if unknown:
        raise DataError(f"unknown dataset(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    uses_train = {"gsm8kinstruct", "gsm8kinstruct_question"} & set(keys)
    needed = [k for k in dict.fromkeys(keys + (["gsm8k"] if uses_train else [])) if k in SOURCES]
    if not _offline():
        for k in needed:
            check_reachable(SOURCES[k].hub_id)

    jobs = {(k, lang, s) for k in needed for lang in SOURCES[k].configs for s in SOURCES[k].splits}
    if uses_train and "gsm8k" not in keys:
        jobs = {j for j in jobs if j != ("gsm8k", "", "test")}
    n_files = 2 * len(NON_EN) if "gsm8kinstruct_question" in keys else 0
    cache: dict[tuple, list[dict]] = {}
    bar = tqdm(total=len(jobs) + n_files, desc="qalign data download", unit="file")

    def fetch(key: str, lang: str, split: str) -> list[dict]:
        if (key, lang, split) not in cache:
            src = SOURCES[key]
            bar.set_postfix_str(f"{src.hub_id} {lang} {split}".strip())
            cache[key, lang, split] = load_rows(src, src.configs[lang], split)
            bar.update()
        return cache[key, lang, split]

    def read_file(path: str) -> list[str]:
        bar.set_postfix_str(f"{QALIGN_REPO} {path}")
        where = f"{Path(qalign_repo) / path}" if qalign_repo is not None else qalign_url(path)
        lines = qalign_lines(read_qalign_file(path, qalign_repo), where)
        bar.update()
        return lines

    written: dict[str, int] = {}
    try:
        for key in keys:
            for rel, data in _outputs(key, fetch, read_file).items():
                path = Path(out_dir) / rel
                if rel.endswith(".jsonl"):
                    written[rel] = write_jsonl(path, data)
                else:
                    with atomic_write(path) as f:
                        f.write("".join(line + "\n" for line in data))
                    written[rel] = len(data)
    finally:
        bar.close()
    return written
