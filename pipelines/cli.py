"""`vidcurate` command line: run the whole flow, run one stage, inspect outputs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from vidcurate.pipelines.config import load_config
from vidcurate.pipelines.export import FORMATS
from vidcurate.pipelines.interleaved import FORMATS as INTERLEAVED_FORMATS
from vidcurate.schemas.untrusted import Limits
from vidcurate.stages.registry import STAGES

EPILOG = """examples:
  vidcurate run --config pipelines/configs/sample.yaml
  vidcurate doctor --config corpus.yaml                # models, GPU, caption server, store, Ray: seconds
  vidcurate run --config corpus.yaml --incremental      # only inputs not seen by earlier increments
  vidcurate serve --config corpus.yaml --cron "0 3 * * *"   # the same, scheduled (Prefect)
  vidcurate stage split --input runs/sample/probe --output runs/sample/split
  vidcurate inspect runs/sample            # ledger summary of a run
  vidcurate inspect runs/sample/shard/dataset -n 2   # samples from shards (also s3://...)
  vidcurate report runs/sample             # runs/sample/report.html
  vidcurate export runs/sample/shard/dataset --format timesuite --out exports/
"""


# A first start compiles Prefect's imports and creates its database: 21-24 s on 2 idle cores, more
# on a busy machine, past Prefect's own 20 s (docs/decisions.md).
PREFECT_START_TIMEOUT_ENV = "VIDCURATE_PREFECT_START_TIMEOUT"
DEFAULT_PREFECT_START_TIMEOUT_S = 120


def _config(args: argparse.Namespace, **extra):
    return load_config(
        args.config,
        **{"inputs": getattr(args, "inputs", None), "run_dir": getattr(args, "run_dir", None), "ray.address": args.ray_address},
        **extra,
    )


REPORTED_IN_ONE_LINE = ("FailureBudgetExceeded", "PublishError", "StorageFailed")


class _OneLineErrors(logging.Filter):
    """Prefect logs a failed task or flow with its traceback; an error this command reports in one
    line (over the failure budget, a failed publish, a full disk) keeps Prefect's line, without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ in REPORTED_IN_ONE_LINE:
            record.exc_info = record.exc_text = None
        return True


def quiet_reported_errors(debug: bool) -> None:
    if not debug:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).addFilter(_OneLineErrors())


def cmd_run(args: argparse.Namespace) -> int:
    quiet_reported_errors(args.debug)
    cfg = _config(args, **({"failures.retry_transient": False} if args.no_retry else {}))
    from vidcurate.flows.corpus import corpus_flow
    from vidcurate.flows.services import run_services

    with run_services(cfg, args.prefect_start_timeout):
        if args.incremental:
            from vidcurate.flows.incremental import incremental_flow

            print(json.dumps(incremental_flow(cfg.model_dump()), indent=2))
            return 0
        stats = corpus_flow(cfg.model_dump())
    print(json.dumps({k: stats[k] for k in ("videos", "clips", "samples")}, indent=2))
    from vidcurate.pipelines.runner import Runner

    print(f"shards: {Runner(cfg).dataset()}  ledger: {Path(cfg.run_dir) / 'ledger.parquet'}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.doctor import diagnose

    findings = diagnose(_config(args))
    for finding in findings:
        print(finding.line())
    failed = sum(not f.ok for f in findings)
    print(f"{failed} problem(s)" if failed else "ready to run")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """A Prefect deployment of the incremental flow on a cron schedule, served by this process."""
    from vidcurate.flows.incremental import incremental_flow
    from vidcurate.flows.services import run_services

    cfg = _config(args)
    with run_services(cfg, args.prefect_start_timeout, start_ray=False):  # its flow runs start their own Ray
        incremental_flow.serve(name=args.name, cron=args.cron, parameters={"config": cfg.model_dump()})
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.runner import Runner

    output = Path(args.output)
    overrides = {"run_dir": str(output.parent)}
    from_inputs = STAGES[args.name].reads == "inputs"  # probe: its input is the listed files, not a stage
    if from_inputs:
        overrides["inputs"] = args.input
    cfg = load_config(args.config, **overrides, **{"ray.address": args.ray_address})
    runner = Runner(cfg)
    marker = runner.run_stage(args.name, None if from_inputs else args.input, output)
    print(marker.to_json())
    return 0


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(sample_bytes=args.max_sample_mb << 20, json_bytes=args.max_json_mb << 20)


def cmd_inspect(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.inspect import describe

    describe(args.path, args.n, sys.stdout, _limits(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.report import write_report

    path = write_report(Path(args.run_dir), Path(args.out) if args.out else None, args.max_thumbnails)
    print(f"report: {path}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.audit import audit

    print(json.dumps(audit(Path(args.run_dir), clips=args.clips, seed=args.seed), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vidcurate.pipelines.export import export
    from vidcurate.pipelines.interleaved import export_documents

    if args.format in INTERLEAVED_FORMATS:
        if args.turns != 1 or args.absolute_media:
            raise ValueError(f"{args.format}: --turns and --absolute-media are for the QA formats ({', '.join(FORMATS)})")
        summary = export_documents(args.source, args.format, args.out, limits=_limits(args))
    else:
        summary = export(args.source, args.format, args.out, absolute_media=args.absolute_media, limits=_limits(args), turns=args.turns)
    print(json.dumps(summary, indent=2))
    return 0


def _at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"at least 1, got {number}")
    return number


def _shard_limits(parser: argparse.ArgumentParser) -> None:
    """Shards are untrusted: the most a reader holds of one sample (larger ones are skipped, too_large)."""
    default = Limits()
    parser.add_argument("--max-sample-mb", type=int, default=default.sample_bytes >> 20, help="MiB one sample's members may hold together (default %(default)s)")
    parser.add_argument("--max-json-mb", type=int, default=default.json_bytes >> 20, help="MiB a sample's json member may hold (default %(default)s)")


def _prefect_start_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefect-start-timeout",
        type=float,
        metavar="S",
        default=os.environ.get(PREFECT_START_TIMEOUT_ENV, str(DEFAULT_PREFECT_START_TIMEOUT_S)),
        help=f"seconds to wait for Prefect's temporary server (default: ${PREFECT_START_TIMEOUT_ENV} or {DEFAULT_PREFECT_START_TIMEOUT_S})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidcurate", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every stage through the Prefect flow")
    run.add_argument("--config", help="pipeline YAML")
    run.add_argument("--inputs", help="directory, glob, list file or s3:// prefix (overrides the config)")
    run.add_argument("--run-dir", help="where stage outputs go (overrides the config)")
    run.add_argument("--ray-address", help="'auto' or ray://host:port; default: local Ray")
    run.add_argument("--incremental", action="store_true", help="only inputs no earlier increment saw (run-dir: the corpus root)")
    run.add_argument("--no-retry", action="store_true", help="keep completed stages as they are: do not retry transient failures")
    _prefect_start_timeout(run)
    run.set_defaults(func=cmd_run)

    doctor = sub.add_parser("doctor", help="check a config end to end in seconds (exit 1 on any problem)")
    doctor.add_argument("--config", help="pipeline YAML")
    doctor.add_argument("--inputs")
    doctor.add_argument("--run-dir")
    doctor.add_argument("--ray-address")
    doctor.set_defaults(func=cmd_doctor)

    serve = sub.add_parser("serve", help="serve the incremental flow as a Prefect deployment on a cron schedule")
    serve.add_argument("--cron", required=True, help='e.g. "0 3 * * *" (daily at 03:00)')
    serve.add_argument("--config", help="pipeline YAML (run_dir: the corpus root)")
    serve.add_argument("--inputs")
    serve.add_argument("--run-dir")
    serve.add_argument("--ray-address")
    serve.add_argument("--name", default="scheduled", help="deployment name")
    _prefect_start_timeout(serve)
    serve.set_defaults(func=cmd_serve)

    stage = sub.add_parser("stage", help="run one stage on a previous stage's output")
    stage.add_argument("name", choices=list(STAGES))
    stage.add_argument("--input", required=True, help="previous stage's directory (probe: the input spec)")
    stage.add_argument("--output", required=True, help="this stage's directory")
    stage.add_argument("--config", help="pipeline YAML (stage settings)")
    stage.add_argument("--ray-address")
    stage.set_defaults(func=cmd_stage)

    inspect = sub.add_parser("inspect", help="summarise a run directory, or print samples of shards")
    inspect.add_argument("path", help="run directory, or shards: a folder, .tar or URL such as s3://bucket/dataset/")
    inspect.add_argument("-n", type=int, default=3, help="samples to print")
    _shard_limits(inspect)
    inspect.set_defaults(func=cmd_inspect)

    report = sub.add_parser("report", help="write a self-contained HTML report of a run")
    report.add_argument("run_dir")
    report.add_argument("--out", help="HTML file (default: RUN/report.html)")
    report.add_argument("--max-thumbnails", type=int, default=60, help="per status (kept, rejected, failed)")
    report.set_defaults(func=cmd_report)
    audit = sub.add_parser("audit", help="needle audit: how well the run's captioner finds needles put into its clips")
    audit.add_argument("run_dir")
    audit.add_argument("--clips", type=int, default=8, help="clips of the run to put needles into")
    audit.add_argument("--seed", type=int, default=0)
    audit.set_defaults(func=cmd_audit)
    export = sub.add_parser("export", help="write a trainer's JSON (+ media of every clip and window) from shards")
    export.add_argument("source", help="shards: a dataset folder or URL (the run's shard/dataset)")
    export.add_argument("--format", required=True, choices=FORMATS + INTERLEAVED_FORMATS, help="a trainer's QA format, or an interleaved one (documents)")
    export.add_argument("--out", required=True, help="folder for <format>.json and media/ (the trainer's media root)")
    export.add_argument("--absolute-media", action="store_true", help="name media by absolute path instead of relative to the JSON")
    export.add_argument(
        "--turns", type=_at_least_one, default=1,
        help="QA items a record may hold (default 1: one each); items join only where none of their answers is in an earlier turn",
    )
    _shard_limits(export)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here or in CI
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one line each
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # "no AVX512 build" notices
    from vidcurate.flows.services import ServerDidNotStart, Terminated
    from vidcurate.pipelines.disk import StorageFailed
    from vidcurate.pipelines.ledger import FailureBudgetExceeded
    from vidcurate.pipelines.publish import PublishError
    from vidcurate.stages.failures import local_io_error

    try:
        return args.func(args)
    except Exception as exc:
        if args.debug:
            raise
        if not isinstance(exc, StorageFailed) and (storage := local_io_error(exc)):  # the disk failed outside the runner's guard
            exc = StorageFailed.of_error(args.command, storage, Path(getattr(args, "run_dir", None) or "."), None)
        if isinstance(exc, (FailureBudgetExceeded, PublishError, StorageFailed)):  # what succeeded is written; the exit code makes schedulers alert
            print(f"vidcurate: failed: {exc}", file=sys.stderr)
            return 3
        if isinstance(exc, (FileNotFoundError, ValueError)):  # user errors: one clear line, no traceback
            print(f"vidcurate: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, ServerDidNotStart):  # nothing of the run is left running by now
            longer = f"run again with a longer --prefect-start-timeout (or {PREFECT_START_TIMEOUT_ENV}), or " if exc.timed_out else ""
            print(f"vidcurate: failed: {exc}; {longer}start a server (`prefect server start`) and set PREFECT_API_URL", file=sys.stderr)
            return 1
        raise
    except Terminated:  # SIGTERM: one line; `run` has stopped every process it started by now
        print("vidcurate: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:  # Ctrl-C: the same
        print("vidcurate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
