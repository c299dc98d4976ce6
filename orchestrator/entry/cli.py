"""The `pavdm` command line: argument parsing, config assembly and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence

from orchestrator.core.config import SCHEDULE_KINDS, Config, validate
from orchestrator.core.errors import RunFailed, UserError
from orchestrator.state.settings import load_config, model_names

EXIT_USAGE = 2
DEFAULT_MODEL = "tiny"  # the embedded model shipped in models/tiny
EXIT_FAILED = 1
EVAL_SECONDS = 60.0  # `pavdm eval`'s video length


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message instead of usage plus message."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_common_options(parser: Parser, config_help: str | None = None,
                       overrides_help: str = "config overrides") -> None:
    """--config (when the command reads config files), --quiet and the trailing KEY=VALUE overrides."""
    if config_help:
        parser.add_argument("--config", action="append", default=[], metavar="FILE", help=config_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)


GENERATE_EPILOG = """\
overrides:
  Any config key can be set as KEY=VALUE after the options, e.g.
    schedule.steps=60 schedule.noisy_chunks=6 model.rho=0.8 pipeline.stages=2 pipeline.halo=1
  Keys and their meaning are listed in orchestrator/core/config.py and configs/default.yaml.

prompt schedule:
  --prompt may be repeated as "SECONDS:TEXT"; each prompt holds from its start time until the
  next one, e.g. --prompt "0:a red circle" --prompt "20:a green square". A plain TEXT starts at 0.
  A prompt that itself starts with a number and a colon is written with its time: "0:12:30 meeting".

outputs:
  --out, --latents-out and the config saved beside the MP4 replace existing files of those names once
  the video is complete; they must differ from each other and from --init-latents.

examples:
  pavdm generate --prompt "a magenta square bouncing" --seconds 60 --out square.mp4
  pavdm generate --model gaussian --seconds 60 --fps 24 schedule.steps=60 --out gp.mp4
  pavdm generate --model ./my-skyreels-folder --latents-out latents.arrow --out video.mp4
"""


def build_parser() -> Parser:
    defaults = load_config(model=DEFAULT_MODEL)
    parser = Parser(
        prog="pavdm",
        description="Long videos with progressive autoregressive video diffusion (PA-VDM).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    gen = commands.add_parser(
        "generate",
        help="generate a video",
        description="Generate a video with the progressive sampler and write it as H.264 MP4.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--prompt", action="append", metavar="TEXT",
                     help='prompt, or "SECONDS:TEXT" to start it later; repeatable (default from the config)')
    gen.add_argument("--seconds", type=float,
                     help=f"video length in seconds (default {defaults.seconds:g}, at most run.max_seconds="
                          f"{defaults.run.max_seconds:g})")
    gen.add_argument("--fps", type=float, help=f"frames per second (default {defaults.fps:g})")
    gen.add_argument("--seed", type=int, help=f"random seed, 0..2^63-1 (default {defaults.seed})")
    gen.add_argument("--out", metavar="FILE.mp4",
                     help=f"output MP4 (default {defaults.run.root}/<run id>/video.mp4)")
    gen.add_argument("--latents-out", metavar="FILE.arrow", help="also write every latent frame as Arrow IPC")
    gen.add_argument("--init-latents", metavar="FILE.arrow",
                     help="continue a video: its last chunks (from --latents-out) become the context")
    gen.add_argument("--live", action="store_true",
                     help="steer the video as it is made: every line on standard input becomes the prompt from the "
                          "next chunk to enter the window; end of input or Ctrl-C ends it after the window drains "
                          "(--seconds is then its longest length, default run.max_seconds)")
    gen.add_argument("--model", metavar="NAME|PATH",
                     help=f"model config name ({', '.join(model_names())}; default {DEFAULT_MODEL}) or a diffusers "
                          "model folder")
    add_common_options(gen, "extra YAML config merged over the defaults; repeatable")

    res = commands.add_parser(
        "resume",
        help="continue a stopped run",
        description="Continue a stopped run from its newest valid checkpoint. Overrides may change how it runs "
                    "(pipeline.*, metrics.*, checkpoint.*) but not what it makes (model, schedule, seed, prompts).",
    )
    res.add_argument("run", metavar="RUN", help="run id (under --root) or run folder")
    res.add_argument("--root", default=defaults.run.root, help=f"folder holding the runs (default {defaults.run.root})")
    res.add_argument("--out", metavar="FILE.mp4", help="write the MP4 here instead of where the run was told")
    res.add_argument("--latents-out", metavar="FILE.arrow",
                     help="write the latents here instead (for a run that writes latents)")
    res.add_argument("--live", action="store_true",
                     help="steer it as it is made, as generate --live does, from where it stands")
    add_common_options(res)

    trn = commands.add_parser(
        "train",
        help="train a model with the progressive recipe",
        description="Train (or fine-tune, init_from=FOLDER, deepen, architecture.layers=N, widen, "
                    "architecture.heads and ffn_dim, and merge heads, architecture.heads and head_dim) a SkyReels-V2 "
                    "transformer with the progressive recipe on the procedural world; the EMA weights are saved "
                    "with save_pretrained.",
    )
    trn.add_argument("--resume", action="store_true", help="continue from <out>/training_state.pt")
    add_common_options(trn, "training YAML, e.g. configs/train/tiny.yaml; repeatable",
                       "config overrides, e.g. optim.steps=100")

    ev = commands.add_parser(
        "eval",
        help="measure quality over time on the procedural world",
        description="Generate long videos for fixed prompts and seeds under the progressive schedule and the "
                    "comparison schedules, score every 2-s segment with the world's probe, and write a table "
                    "(report.md), results.json and a PNG plot per metric.",
    )
    ev.add_argument("--model", default="tiny", metavar="NAME|PATH", help="model to evaluate (default tiny)")
    ev.add_argument("--seconds", type=float, help=f"length of every video (default {EVAL_SECONDS:g})")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    ev.add_argument("--prompt", action="append", help="prompts (default: five fixed world captions)")
    ev.add_argument("--kinds", nargs="+", choices=SCHEDULE_KINDS, metavar="KIND",
                    help=f"schedules, any of {', '.join(SCHEDULE_KINDS)} (default: all); this option "
                         "and --seeds take every word after them, so give KEY=VALUE overrides first")
    ev.add_argument("--out-dir", default="eval", help="folder for the results (default eval)")
    ev.add_argument("--stills", action="store_true",
                    help="instead of videos, draw one still per seed from each prompt alone (no context) and "
                         "score how often the prompted objects are there with their colour and shape; default "
                         "prompts: eight one-object captions; writes stills.json and stills.png")
    ev.add_argument("--frames", type=int,
                    help="with --stills: frames drawn together in each still, at one level (default 1; a "
                         "chunk's worth draws them as a video's first chunk is drawn)")
    add_common_options(ev)

    bat = commands.add_parser(
        "batch",
        help="one video per row of a prompt list",
        description="Generate one video per row of a JSONL, CSV or Parquet prompt list, all rows through one "
                    "pipeline (pipeline.max_streams at once). Columns: prompt (or prompts, a schedule of "
                    '"SECONDS:TEXT" entries; in CSV separated by |), and optionally id, seconds, seed. Writes '
                    "<id>.mp4 per row and manifest.parquet to --out; a rerun skips rows finished with the same "
                    "settings, makes again those whose settings changed and continues "
                    "interrupted ones from their checkpoints. A bad row fails alone and is recorded in the "
                    "manifest; the exit code is 1 if any row failed.",
    )
    bat.add_argument("prompts", metavar="PROMPTS", help="prompt list: a file or a pyarrow.fs URI (s3://, gs://, ...)")
    bat.add_argument("--out", required=True, metavar="DIR|URI", help="folder or pyarrow.fs URI for the videos")
    bat.add_argument("--model", metavar="NAME|PATH", help=f"model (default {DEFAULT_MODEL})")
    bat.add_argument("--root", default=defaults.run.root,
                     help=f"local folder for the rows' runs and checkpoints (default {defaults.run.root})")
    add_common_options(bat, "extra YAML config; repeatable", "config overrides, e.g. seconds=8")

    srv = commands.add_parser(
        "serve",
        help="serve the video API (OpenAI-shaped) on Ray Serve",
        description="Start the Ray Serve application orchestrator.entry.serving.app:app locally (or on RAY_ADDRESS): "
                    "POST/GET/DELETE /v1/videos, /v1/videos/{id}/content, /v1/videos/{id}/stream (fragmented "
                    "MP4 while it is made), POST /v1/videos/extensions, POST /v1/videos/{id}/prompt and /stop "
                    "(steer a video in progress, or one created with live: true), /metrics. serve.keys_file (tenants, "
                    "their key "
                    "hashes and quotas) or PAVDM_API_KEY (one key) requires a bearer token; each tenant sees only its "
                    "own videos. Videos live in --root and survive restarts; SIGTERM checkpoints them and exits.",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    srv.add_argument("--root", default=defaults.run.root,
                     help=f"runs store for the videos (default {defaults.run.root})")
    srv.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH", help=f"model (default {DEFAULT_MODEL})")
    srv.add_argument("--allow-unauthenticated", action="store_true",
                     help="listen on a non-loopback --host with no API key (refused otherwise); warns at every start")
    srv.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="config overrides, e.g. pipeline.max_streams=4 serve.max_queued=32")

    lst = commands.add_parser("runs", help="list runs", description="List runs with their state and progress.")
    lst.add_argument("--root", default=defaults.run.root, help=f"folder holding the runs (default {defaults.run.root})")
    return parser


def apply_flags(config: Config, args: argparse.Namespace) -> Config:
    """Explicit flags win over config files and overrides."""
    for section, key, value in [
        (config, "seconds", args.seconds), (config, "fps", args.fps), (config, "seed", args.seed),
        (config, "prompts", args.prompt), (config, "init_latents", args.init_latents),
        (config.output, "out", args.out), (config.output, "latents_out", args.latents_out),
    ]:
        if value is not None:
            setattr(section, key, value)
    validate(config)
    return config


def report(result) -> None:
    share = result.checkpoint_seconds / result.seconds if result.seconds else 0.0
    first = "" if result.first_frame_seconds is None else f"first frame after {result.first_frame_seconds:.1f} s; "
    print(f"wrote {result.out} ({result.frames} frames in {result.seconds:.1f} s, run {result.run_id}; {first}"
          f"checkpoints {result.checkpoint_seconds:.1f} s = {share:.1%}; restarts {result.restarts})")


def generate_config(args: argparse.Namespace) -> Config:
    """The config `pavdm generate` runs with these arguments: YAML files, overrides, then the flags."""
    return apply_flags(load_config(args.config, args.overrides, model=args.model or DEFAULT_MODEL), args)


def run_generate(args: argparse.Namespace) -> int:
    from orchestrator.entry.generate import generate

    config = generate_config(args)
    if args.live:
        from orchestrator.entry.live import run_steered

        if args.seconds is None:
            config.seconds = config.run.max_seconds
        report(run_steered(lambda steering: generate(config, not args.quiet, steering), sys.stdin))
        return 0
    report(generate(config, progress=not args.quiet))
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from orchestrator.entry.generate import resume

    def resumed(steering=None):
        return resume(args.run, args.root, args.overrides, progress=not args.quiet, out=args.out,
                      latents_out=args.latents_out, steering=steering)

    if args.live:
        from orchestrator.entry.live import run_steered

        report(run_steered(resumed, sys.stdin))
        return 0
    report(resumed())
    return 0


def run_train(args: argparse.Namespace) -> int:
    from training.recipe.config import load_train_config
    from training.recipe.train import describe_losses, train

    summary = train(load_train_config(args.config, args.overrides), progress=not args.quiet, resume=args.resume)
    print(f"trained {summary['steps']} steps in {summary['seconds'] / 60:.1f} min; {describe_losses(summary)}; "
          f"saved to {summary['config']['out']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.stills:
        return run_eval_stills(args)
    from pathlib import Path

    from training.evaluation.videos import PROMPTS, evaluate, report

    if args.frames is not None:
        raise UserError("--frames applies to --stills only")
    seconds = EVAL_SECONDS if args.seconds is None else args.seconds
    if not seconds > 0:
        raise UserError(f"--seconds must be > 0, got {seconds}")
    summary = evaluate(args.model, seconds, args.seeds, args.prompt or list(PROMPTS),
                       args.kinds or list(SCHEDULE_KINDS), Path(args.out_dir), args.overrides,
                       progress=not args.quiet)
    print(report(summary, seconds), end="")
    print(f"results in {args.out_dir}/")
    return 0


def run_eval_stills(args: argparse.Namespace) -> int:
    from pathlib import Path

    from training.evaluation.stills import STILL_PROMPTS, evaluate_stills

    if args.seconds is not None or args.kinds is not None:
        raise UserError("--stills draws stills under no schedule; --seconds and --kinds do not apply")
    frames = 1 if args.frames is None else args.frames
    if frames < 1:
        raise UserError(f"--frames must be >= 1, got {frames}")
    presence = evaluate_stills(args.model, args.seeds, args.prompt or list(STILL_PROMPTS), Path(args.out_dir),
                               args.overrides, frames, progress=not args.quiet)
    width = max(map(len, presence))
    print("\n".join(f"{prompt:<{width}}  {value:.2f}" for prompt, value in presence.items()))
    print(f"results in {args.out_dir}/")
    return 0


def run_batch(args: argparse.Namespace) -> int:
    from orchestrator.entry.batch import run_batch as batch

    config = load_config(args.config, args.overrides, model=args.model or DEFAULT_MODEL)
    rows = batch(config, args.prompts, args.out, args.root, progress=not args.quiet)
    print(f"{len(rows)} rows completed; videos and manifest.parquet in {args.out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from orchestrator.entry.serving.app import serve_locally

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    serve_locally(args.host, args.port, {"root": args.root, "model": args.model, "overrides": args.overrides},
                  args.allow_unauthenticated)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from orchestrator.state.runs import list_runs

    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}/")
        return 0
    print(f"{'RUN':28s} {'STATE':12s} {'FRAMES':>17s}  UPDATED              OUTPUT")
    for status in runs:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.updated))
        progress = f"{status.frames_written}/{status.frames_total or '?'}"
        print(f"{status.run_id:28s} {status.shown_state:12s} {progress:>17s}  {updated}  {status.out}")
    return 0


def stop_as_if_interrupted(signum, frame) -> None:
    """SIGTERM ends a command as Ctrl-C does: runs record 'interrupted' and stay resumable."""
    raise KeyboardInterrupt


def attach_option_values(argv: Sequence[str]) -> list[str]:
    """`--prompt "-1:x"` as `--prompt=-1:x`, so that a value starting with '-' is not taken for an option."""
    joined, items = [], iter(argv)
    for item in items:
        if item == "--prompt":
            value = next(items, None)
            joined.append(item if value is None else f"{item}={value}")
        else:
            joined.append(item)
    return joined


COMMANDS = {"generate": run_generate, "resume": run_resume, "train": run_train, "eval": run_eval, "runs": run_list,
            "batch": run_batch, "serve": run_serve}


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """The command and its options; KEY=VALUE overrides may also come between or after the options."""
    parser = build_parser()
    args, extra = parser.parse_known_args(attach_option_values(argv))
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="pavdm: warning: %(message)s")
    args = parse_command_line(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, stop_as_if_interrupted)  # what a cluster sends a pod it stops
    try:
        return COMMANDS[args.command](args)
    except UserError as err:
        print(f"pavdm: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_USAGE
    except RunFailed as err:
        print(f"pavdm: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("pavdm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
