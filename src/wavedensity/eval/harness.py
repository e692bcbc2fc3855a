"""lm-evaluation-harness on any causal LM with its tokenizer (a native WDA model, a transplanted
teacher with its WDA branches, a plain Hugging Face model): standard tasks by name, custom task YAMLs
(``include_paths``), and standard task definitions run on local copies of their data (``task_data``).

The harness scores a continuation with teacher-forced passes over context + continuation, which
is honest only for causal models: ``pooled`` routing (the release's) is refused. Batches are
right-padded by the harness; causal routing leaves the scored positions untouched by the padding.

``add_harness_arguments`` / ``harness_command`` are the ``--harness`` options and their command, shared
by ``wda eval`` (native models) and ``wda transplant eval`` (a teacher with an adapter), which load
the model their own way.
"""

import argparse
import json
import re
import tempfile
from pathlib import Path

# A top-level WikiText heading, " = Title = " (sections are " = = Section = = ").
WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")
LOCAL_SUFFIXES = (".json", ".jsonl", ".raw")


class HarnessError(ValueError):
    """A harness run that cannot go ahead as asked; the message names the task or file."""


def wikitext_documents(path) -> list[dict]:
    """A WikiText ``.raw`` file as ``{"page": article}`` rows, split at top-level headings: the row
    format of the harness's ``wikitext`` task (``EleutherAI/wikitext_document_level``)."""
    articles: list[list[str]] = []
    preamble: list[str] = []  # lines before the first heading belong to the first article
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if WIKITEXT_ARTICLE.match(line.rstrip("\n")):
            articles.append(preamble + [line])
            preamble = []
        elif articles:
            articles[-1].append(line)
        else:
            preamble.append(line)
    if not articles:
        raise HarnessError(f"{path}: no WikiText articles (lines ' = Title = ') found")
    return [{"page": "".join(lines)} for lines in articles]


def task_manager(tasks: list[str], include_paths: list[str]):
    """Only the include paths are indexed when they define every task (indexing the harness's own
    ~15,000 task files takes tens of seconds); otherwise the built-in tasks are indexed too."""
    from lm_eval.tasks import TaskManager

    for path in include_paths:
        if not Path(path).is_dir():
            raise HarnessError(f"--include-path {path}: no such directory")
    if include_paths:
        local = TaskManager(include_path=list(include_paths), include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    return TaskManager(include_path=list(include_paths) or None)


def local_task_config(manager, task: str, data_file, scratch: Path) -> dict:
    """The config of ``task`` with its evaluation split read from ``data_file`` (rows in the format of the
    task's hub dataset; a WikiText ``.raw`` file is split into articles first)."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None or entry.kind is not Kind.TASK:
        raise HarnessError(f"--task-data {task}=...: {task!r} is not a single YAML-defined task of the harness")
    data_file = Path(data_file)
    if not data_file.is_file():
        raise HarnessError(f"--task-data {task}={data_file}: no such file")
    if data_file.suffix not in LOCAL_SUFFIXES:
        raise HarnessError(f"--task-data {task}={data_file}: expected rows of the task's dataset as .json/.jsonl, "
                           "or a WikiText .raw file")
    if data_file.suffix == ".raw":
        rows = wikitext_documents(data_file)
        data_file = scratch / f"{task}.jsonl"
        data_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = load_yaml(entry.yaml_path, resolve_func=True)
    split_key = "test_split" if config.get("test_split") else "validation_split"
    split = config[split_key]
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        config[key] = split if key == split_key else None
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {split: str(data_file)}, "cache_dir": str(scratch / "datasets")})
    return config


def load_tasks(manager, tasks: list[str], task_data: dict[str, str], scratch: Path) -> list:
    """Task objects, loaded one by one so a dataset that cannot be reached is named."""
    unknown = sorted(set(tasks) - set(task_data) - set(manager.all_tasks))
    if unknown:
        raise HarnessError(f"unknown harness task(s) {unknown}; check the names (lm_eval --tasks list) or pass "
                           "--include-path DIR holding their YAML")
    extra = sorted(set(task_data) - set(tasks))
    if extra:
        raise HarnessError(f"--task-data for {extra}, which --harness does not name")
    from datasets.exceptions import DatasetGenerationError

    loaded = []
    for task in tasks:
        spec = local_task_config(manager, task, task_data[task], scratch) if task in task_data else task
        try:
            built = manager.load([spec])
        except DatasetGenerationError as err:  # a local file that is not rows of JSON
            source = task_data.get(task, "its local data files")
            raise HarnessError(f"task {task}: cannot read {source} ({describe(err.__cause__ or err)})") from err
        except (OSError, ConnectionError) as err:  # datasets/hub errors are OSError subclasses
            raise HarnessError(
                f"task {task}: its dataset could not be loaded ({describe(err)}); the standard tasks download from "
                f"the Hugging Face hub. Offline, pass --task-data {task}=FILE with local rows"
            ) from err
        loaded += list(built["tasks"].values())
    return loaded


def describe(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def context_length(config) -> int:
    """The longest window the model scores: a WDA model's (or transplant's) ``seq_len``, else the
    positions of a plain Hugging Face model."""
    length = getattr(config, "seq_len", None) or getattr(config, "max_position_embeddings", None)
    if not length:
        raise HarnessError(f"{type(config).__name__} names no context length (seq_len or max_position_embeddings)")
    return int(length)


def run_harness(model, tokenizer, tasks: list[str], *, max_length: int | None = None, include_paths: list[str] = (),
                task_data: dict[str, str] | None = None, limit: int | None = None, num_fewshot: int | None = None,
                batch_size: int = 1, bootstrap_iters: int = 1000) -> dict:
    """Evaluate the causal LM ``model`` with lm-evaluation-harness; returns the results (JSON-serialisable).
    A config with ``routing`` (a WDA model's, a transplant's branches') must route causally;
    ``max_length`` defaults to ``context_length(model.config)``."""
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    config = model.config
    if getattr(config, "mixer", "wda") == "wda" and getattr(config, "routing", None) == "pooled":
        raise HarnessError("routing='pooled' reads later tokens, so the harness's teacher-forced scores would see the "
                           "answers; evaluate a causal model (routing='prefix' or 'static')")
    if not tasks:
        raise HarnessError("--harness needs at least one task name")
    task_data = dict(task_data or {})
    manager = task_manager(tasks, list(include_paths))
    use_cache = model.config.use_cache
    try:
        with tempfile.TemporaryDirectory(prefix="wda-harness-") as scratch:
            loaded = load_tasks(manager, tasks, task_data, Path(scratch))
            generating = sorted(t.config.task for t in loaded if t.config.output_type == "generate_until")
            if generating and batch_size > 1:
                raise HarnessError(f"{generating} generate text, and batched prompts would be left-padded, which WDA "
                                   "models refuse (absolute positions, prefix means); use --batch-size 1")
            model.config.use_cache = False  # scoring passes need no decoding cache; generate() asks for its own
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                      max_length=max_length or context_length(config))
            results = simple_evaluate(model=lm, tasks=loaded, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False, bootstrap_iters=bootstrap_iters)
    finally:
        model.config.use_cache = use_cache
    data = {task: f"local file {Path(task_data[task]).resolve()}" if task in task_data else
            data_source(results["configs"][task]) for task in results["results"]}
    report = {key: results.get(key) for key in ("results", "n-shot", "n-samples", "higher_is_better", "versions")}
    report |= {"data": data, "limit": limit, "lm_eval_version": lm_eval.__version__}
    return json.loads(json.dumps(report, default=str))  # numpy scalars and the like become plain JSON


def data_source(task_config: dict) -> str:
    """Where a task's examples came from: local files named in its config, or a hub dataset."""
    files = (task_config.get("dataset_kwargs") or {}).get("data_files")
    if files:
        return f"local files {files}"
    name = task_config.get("dataset_name")
    return f"{task_config.get('dataset_path')}{':' + name if name else ''} (hub)"


# ---- the --harness options of `wda eval` and `wda transplant eval` -------------------------------------

HARNESS_ONLY = (("--include-path", "include_path"), ("--task-data", "task_data"), ("--limit", "limit"),
                ("--num-fewshot", "num_fewshot"), ("--output", "output"))
# the plain evaluation's options (whichever the command has): with --harness they would be ignored
PLAIN_ONLY = (("--data", "data"), ("--max-windows", "max_windows"), ("--max-tokens", "max_tokens"))


def add_harness_arguments(parser: argparse.ArgumentParser) -> None:
    harness = parser.add_argument_group(
        "lm-evaluation-harness", "With --harness TASKS (instead of --data) the model is evaluated by lm_eval.")
    harness.add_argument("--harness", metavar="TASKS", help="comma-separated harness tasks, e.g. "
                         "wikitext,lambada_openai,hellaswag,arc_easy,piqa (their data comes from the hub)")
    harness.add_argument("--include-path", action="append", default=[], metavar="DIR",
                         help="directory of custom task YAML files (repeatable)")
    harness.add_argument("--task-data", action="append", default=[], metavar="TASK=FILE",
                         help="run TASK on local rows in FILE (.json/.jsonl in the task's dataset format, or a "
                              "WikiText .raw file for wikitext) instead of its hub dataset (repeatable)")
    harness.add_argument("--limit", type=int, help="evaluate at most this many examples per task")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: the task's)")
    harness.add_argument("--batch-size", type=int, default=1)
    harness.add_argument("--output", metavar="FILE", help="write the results as JSON (for `wda export "
                         "--harness-results`)")


def check_no_harness_flags(args) -> None:
    """Without --harness, its options would be ignored: refuse them by name."""
    used = [flag for flag, key in HARNESS_ONLY if getattr(args, key)]
    if used:
        raise HarnessError(f"{', '.join(used)} only apply with --harness")


def parse_task_data(entries: list[str]) -> dict[str, str]:
    pairs = {}
    for entry in entries:
        task, sep, path = entry.partition("=")
        if not sep or not task or not path:
            raise HarnessError(f"--task-data {entry!r}: expected TASK=FILE")
        if task in pairs:
            raise HarnessError(f"--task-data names {task} twice")
        pairs[task] = path
    return pairs


def check_harness_flags(args) -> None:
    """The checks that need no model (run them before loading one)."""
    used = [flag for flag, key in PLAIN_ONLY if getattr(args, key, None) is not None]
    if used:
        raise HarnessError(f"{'/'.join(used)} and --harness are two different evaluations: give one")
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise HarnessError(f"{flag} must be >= 1, got {value}")
    parse_task_data(args.task_data)


def harness_command(args, model, tokenizer, heading: str) -> int:
    """Run ``args.harness`` on ``model`` and report it: JSON with ``--json``, else ``heading`` and the
    harness's table; ``--output FILE`` also writes the JSON (``report["model"]`` is ``args.model`` or
    ``args.adapter``, what the command was given). Callers run ``check_harness_flags`` before loading the model."""
    tasks = [task.strip() for task in args.harness.split(",") if task.strip()]
    report = run_harness(model, tokenizer, tasks, include_paths=args.include_path,
                         task_data=parse_task_data(args.task_data), limit=args.limit, num_fewshot=args.num_fewshot,
                         batch_size=args.batch_size)
    report["model"] = getattr(args, "model", None) or getattr(args, "adapter", None)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    from lm_eval.utils import make_table

    print(f"{heading}, lm_eval {report['lm_eval_version']}, limit {args.limit or 'none'}")
    print(make_table(report))
    for task, source in report["data"].items():
        print(f"  {task}: {source}")
    if args.output:
        print(f"wrote {args.output}")
    return 0
