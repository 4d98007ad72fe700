"""Writes notebooks/*.ipynb (kept in the repo without outputs). Edit here, run `.venv/bin/python tools/make_notebooks.py`."""
import nbformat as nbf
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

def nb(cells, path):
    n = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                            "language_info": {"name": "python"}})
    for i, c in enumerate(n.cells):
        c["id"] = f"cell-{i}"
    nbf.write(n, path)

def params(src):
    c = new_code_cell(src)
    c.metadata["tags"] = ["parameters"]
    return c

OVERRIDES = '''# Any key of params/<size>.yaml can be overridden as well (papermill -p KEY VALUE), for example:
model = None   # a Hub id or a local path, e.g. "Qwen/Qwen2.5-7B"
lr = None
epochs = None'''

nb([
    new_markdown_cell("# Stage 1: question alignment\n\nFine-tunes the base model to translate non-English GSM8KInstruct *questions* into English "
                      "(QAlign), or on one of the Table 4 ablations (`en2x_question`, `x2en_response`, `en2x_response`, `flores_x2en`).\n\n"
                      "Headless: `papermill notebooks/stage1.ipynb out.ipynb -p size 7b -p task x2en_question`. "
                      "Writes `runs/<size>/<run_name>/` (model, tokenizer, resolved config, loss log, loss curve); a finished run is skipped."),
    params('size = "tiny"            # params/<size>.yaml: tiny | 7b | 13b\ntask = "x2en_question"    # x2en_question | en2x_question | x2en_response | en2x_response | flores_x2en\n'
           'langs = None             # e.g. "de,zh"; None = the size\'s stage1_langs\nrun_name = None          # None = stage1-<task>\n' + OVERRIDES),
    new_code_cell("from qalign_lib import config, modeling, reporting, training\n\n"
                  "cfg = config.resolve(size, **config.overrides_from(globals(), size))\nmodeling.preflight(cfg)  # stops here, with the reason, where this size cannot run\n"
                  "reporting.show_config(cfg, stage=1)"),
    new_code_cell("run = training.stage1(cfg, task=task, langs=langs, name=run_name)"),
    new_code_cell("reporting.show_run(run)"),
], "notebooks/stage1.ipynb")

nb([
    new_markdown_cell("# Stage 2: response alignment\n\nFine-tunes `init` (the base model or a finished stage-1 run) on reasoning data: "
                      "`metamathqa` (MonoReason), `gsm8k` (SFT), `gsm8kinstruct` (MultiReason, translate-train), or a sequence trained one "
                      "after another (mixed setting: `gsm8kinstruct,metamathqa`).\n\n"
                      "Headless: `papermill notebooks/stage2.ipynb out.ipynb -p size 7b -p init stage1-x2en_question -p data metamathqa`."),
    params('size = "tiny"\ninit = "base"             # "base" or the name of a finished run of this size\n'
           'data = None              # "metamathqa" | "gsm8k" | "gsm8kinstruct" | a sequence "gsm8kinstruct,metamathqa"; None = the size\'s stage2_data\n'
           'langs = "all"            # languages of gsm8kinstruct\nrun_name = None          # None = <init>__<data>\n' + OVERRIDES),
    new_code_cell("from qalign_lib import config, modeling, reporting, training\n\n"
                  "cfg = config.resolve(size, **config.overrides_from(globals(), size))\nmodeling.preflight(cfg)\n"
                  "data_seq = data.split(\",\") if isinstance(data, str) else data\nreporting.show_config(cfg, stage=2)"),
    new_code_cell("run = training.stage2(cfg, init=init, data_seq=data_seq, langs=langs, name=run_name)"),
    new_code_cell("reporting.show_run(run)"),
], "notebooks/stage2.ipynb")

nb([
    new_markdown_cell("# Evaluate\n\nZero-shot, greedy, Alpaca prompt on mGSM and mSVAMP; accuracy = last number in the response vs the gold number "
                      "(reference scorer, as in the paper; the strict scorer beside it).\n\n"
                      "Evaluate a run: `-p run stage1-x2en_question__metamathqa`; the base model: `-p run base`; any published checkpoint: "
                      "`-p model Wenhao97/QAlign-MetaMathQA-7B`. Generations are appended as they are produced and a rerun resumes."),
    params('size = "tiny"\nrun = "base"              # a finished run of this size, or "base"\nmodel = None              # or: a Hub id / local path to evaluate as it is (overrides run)\n'
           'benchmarks = "mgsm,msvamp"\nlangs = None              # None = the size\'s eval_langs\nlimit = None              # questions per language; None = the size\'s eval_limit\n'
           'max_new_tokens = None\neval_batch_size = None'),
    new_code_cell("from qalign_lib import config, evaluation, modeling, reporting\n\n"
                  "overrides = {k: v for k, v in config.overrides_from(globals(), size).items() if k != \"model\"}\n"
                  "cfg = config.resolve(size, **overrides)\nmodeling.preflight(cfg)"),
    new_code_cell("metrics = evaluation.evaluate(cfg, run=run, model=model, benchmarks=benchmarks.split(\",\"), langs=langs, limit=limit)"),
    new_code_cell("reporting.show_metrics(metrics)"),
], "notebooks/evaluate.ipynb")

nb([
    new_markdown_cell("# Report: every table and figure of a study\n\nReads the generations of every system of `params/study-<study>.yaml` "
                      "(rescored here, so a scorer change needs no new generations) and writes `figures/<size>/`: Table 2 (mGSM) and Table 3 "
                      "(mSVAMP) per language with 10-language and non-English averages, Table 4 (stage-1 ablations), Figure 2 (mixed supervision), "
                      "Figure 3 (cross-lingual consistency), 95% bootstrap CIs on every accuracy and average, paired tests of QAlign+MonoReason "
                      "vs MonoReason per language, and the paper-vs-us table.\n\n"
                      "Headless: `papermill notebooks/report.ipynb out.ipynb -p size 7b -p study paper`. Add evaluated published checkpoints "
                      "as rows with `-p extra_models Wenhao97/QAlign-MetaMathQA-7B`."),
    params('size = "tiny"\nstudy = "tiny"          # params/study-<study>.yaml ("paper" = params/study.yaml)\n'
           'extra_models = ""       # comma-separated models evaluated with evaluate.ipynb -p model ..., shown as extra rows\n'
           'n_boot = 10000          # bootstrap resamples'),
    new_code_cell("from pathlib import Path\n\nfrom IPython.display import Image, Markdown, display\n\nfrom qalign_lib import reporting, study as studies\n\n"
                  "s = studies.load(study, size=size)\nwritten = reporting.write_report(s, extra_models=[m for m in extra_models.split(\",\") if m], n_boot=n_boot)\n"
                  "out = Path(next(iter(written.values()))).parent\nprint(f\"wrote {len(written)} outputs to {out}\")"),
    new_code_cell("for name, path in written.items():\n    path = Path(path)\n    if path.suffix == \".md\":\n        display(Markdown(path.read_text()))\n"
                  "    elif path.suffix == \".png\":\n        display(Image(filename=str(path)))"),
], "notebooks/report.ipynb")

nb([
    new_markdown_cell("# Speed benchmark: the reference recipe against ours\n\nOne run, same model, same data. **Training** (GSM8K train, the "
                      "stage-2 length distribution): reference = TRL SFTTrainer with right-padded random batches; ours = padding-free batches, "
                      "length-grouped sampling, Liger kernels and flash-attention-2 where installed (GPU). **Generation** (mGSM, several languages, "
                      "greedy): reference = dataset order, fixed batches, left padding, HF generate; ours = `generation.generate` (sorted by length, "
                      "token budget), with a check that the greedy outputs are identical. Settings: `params/bench.yaml` (a `cpu` and a `cuda` "
                      "section); how each metric is measured: `qalign_lib/benchmark.py`.\n\n"
                      "Headless: `papermill notebooks/benchmark.ipynb out.ipynb -p train_steps 10`. Writes `figures/bench/`: `results.json`, "
                      "`results.md`, `ratios.png`."),
    params('device = "auto"          # settings section of params/bench.yaml: auto (cuda if a GPU is visible, else cpu) | cpu | cuda\n'
           'models = None            # e.g. "tiny-random,embedded:smollm2-135m-instruct"; None = the section\'s models\n'
           'repeats = None           # rounds, alternating which recipe goes first\ntrain_steps = None\nwarmup_steps = None\n'
           'train_batch_size = None\nmax_length = None\ngen_per_lang = None\nmax_new_tokens = None\n'
           'layers = None            # llama2-7b-shape: a number, or "auto" (as many as fit in GPU memory)\n'
           'out_dir = None           # None = figures/bench'),
    new_code_cell("from IPython.display import Image, Markdown, display\n\nfrom qalign_lib import benchmark\n\n"
                  "s = benchmark.settings(device, models=models, repeats=repeats, train_steps=train_steps, warmup_steps=warmup_steps,\n"
                  "                       train_batch_size=train_batch_size, max_length=max_length, gen_per_lang=gen_per_lang,\n"
                  "                       max_new_tokens=max_new_tokens, layers=layers)\nresults = benchmark.run(s, out_dir)"),
    new_code_cell("display(Markdown(benchmark.table(results)))\ndisplay(Image(filename=results[\"files\"][\"png\"]))"),
], "notebooks/benchmark.ipynb")
