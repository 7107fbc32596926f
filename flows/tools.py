"""The `stego` commands outside the pipeline: their options in, a library call out, a summary printed.

`stego predict`, `stego adapt`, `stego sweep-k`, `stego seeds`, `stego names` and `stego export` each have
`add_<tool>_arguments(parser)` and `<tool>_from_args(args) -> exit status` here; `TOOLS`
lists them for `flows/cli.py`. The library (`stego_tasks`) knows nothing of command
lines. Library modules are imported inside the functions, and only the command being
run is set up, so `stego --help` and every stage start without loading torch.

Errors a user can fix (FileNotFoundError, ValueError, RuntimeError) propagate to the
CLI's one-sentence handler.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from flows.params_tool import add_params_arguments, params_from_args
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.params_schema import INT_LIMIT
from stego_tasks.paths import PARAMS_FILE, PATHS, run_path

# --- stego predict -----------------------------------------------------------------------


def cli_int(text: str) -> int:
    """An integer option, at most what the libraries' C ints hold (as params.yaml's integers are).

    argparse prints the refusal as one line with the option's name (exit status 2).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if abs(value) > INT_LIMIT:
        raise argparse.ArgumentTypeError(f"{text} is beyond {INT_LIMIT}, the largest integer stego takes")
    return value


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego predict` arguments to `parser`."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGES_OR_DIR",
                        help="image files and/or folders (searched recursively)")
    parser.add_argument("--run", type=Path, default=Path("."), metavar="RUN_DIR",
                        help=f"project folder of a finished run, holding {PATHS['model']}/ (default: .)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder")
    parser.add_argument("--no-flip", action="store_true",
                        help="skip test-time flip averaging (about 2x faster; on when the run's cluster stage used it)")
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF refinement")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="backbone checkpoint (or auto / random) instead of the one the run's model records")
    parser.add_argument("--resolution", type=cli_int, default=None, metavar="N",
                        help="shorter image side fed to the backbone (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def predict_from_args(args: argparse.Namespace) -> int:
    """Run `stego predict` and print a one-line summary.

    The run's own recorded alpha, flip and CRF settings apply (`trained_run.run_settings`).

    Returns:
        0 when at least one image was written, 2 when none was.
    """
    from stego_tasks.tools.predict import predict_paths
    from stego_tasks.tools.predict_output import check_out_dir
    from stego_tasks.tools.trained_run import load_run

    check_out_dir(list(args.inputs), args.out)  # before the model loads: a refused folder costs nothing
    run = load_run(args.run, args.weights, device=args.device, resolution=args.resolution)
    summary = predict_paths(run, list(args.inputs), args.out, flip=run.flip and not args.no_flip, crf=not args.no_crf)
    line = f"wrote {summary.written} images to {args.out}; {len(summary.failed)} failed"
    if summary.failed:
        shown = "; ".join(f"{path} ({reason})" for path, reason in summary.failed[:10])
        more = f"; and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        line += f": {shown}{more}"
    if run.backbone.weights_source == "random":
        line += " (RANDOM backbone weights: the segments mean nothing)"
    print(line)
    return 0 if summary.written else 2


# --- stego adapt -------------------------------------------------------------------------


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego adapt NAME SRC DST` arguments (and the layouts as description) to `parser`."""
    from stego_tasks.data.adapters import ADAPTERS, LAYOUT_HELP

    parser.description = parser.description or LAYOUT_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("name", choices=sorted(ADAPTERS), metavar="NAME", help=f"dataset: {', '.join(sorted(ADAPTERS))}")
    parser.add_argument("src", type=Path, metavar="SRC", help="the dataset root in its usual layout")
    parser.add_argument("dst", type=Path, metavar="DST", help="output corpus root (new, empty, or an earlier output)")
    parser.add_argument("--unlabelled-train", action="store_true",
                        help="Potsdam: add the ids of unlabelled_train.txt to the training split")
    parser.add_argument("--backbone", choices=["vits8", "vitb8"], default=None,
                        help="which published setting: cocostuff27 has vits8 (default) and vitb8; cityscapes27 vitb8; potsdam vits8")
    parser.add_argument("--params", type=Path, default=None, metavar="FILE",
                        help="also write the complete params file here (e.g. params.yaml; an existing one is kept as FILE.bak)")


def adapt_from_args(args: argparse.Namespace) -> int:
    """Run `stego adapt`; print a summary and the corpus params.

    Returns:
        0 when every listed image was written, 2 when some were skipped as unreadable.
    """
    import yaml

    from stego_tasks.data.adapters import PARAMS_FILE, adapt, preset_for, write_params
    from stego_tasks.data.adapters.core import CORPUS_FILE

    preset_for(args.name, args.backbone)  # refuse an unpublished pair before any file is written
    summary = adapt(args.name, args.src, args.dst, unlabelled_train=args.unlabelled_train)
    written = [write_params(args.name, args.dst, args.backbone)] if args.backbone else [Path(args.dst) / PARAMS_FILE]
    if args.params is not None:
        written.append(write_params(args.name, args.dst, args.backbone, args.params))
    images = ", ".join(f"{n} {s}" for s, n in summary.n_images.items())
    labels = ", ".join(f"{n} {s}" for s, n in summary.n_labels.items())
    print(
        f"{summary.name}: {args.dst} holds images ({images}) and labels ({labels}); this run linked "
        f"{summary.n_linked}, copied {summary.n_copied}, converted {summary.n_converted}, "
        f"kept {summary.n_skipped} up-to-date files and removed {summary.n_removed} stale ones."
    )
    for path, reason in summary.failed[:10]:
        print(f"  skipped {path}: {reason}")
    if len(summary.failed) > 10:
        print(f"  ... and {len(summary.failed) - 10} more skipped")
    block = yaml.safe_dump({"corpus": summary.params.as_block(args.dst)}, sort_keys=False, width=1000)
    print(f"Corpus params (also in {Path(args.dst) / CORPUS_FILE}):\n{block}", end="")
    print(f"Complete params with preset {preset_for(args.name, args.backbone)}: {', '.join(map(str, written))}")
    return 2 if summary.failed else 0


# --- stego sweep-k -----------------------------------------------------------------------


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego sweep-k` arguments to `parser`."""
    from stego_tasks.method.probe_fit import INITS

    parser.add_argument("--run", type=Path, default=Path("."), metavar="DIR",
                        help=f"project folder of a trained run, holding {PATHS['model']} and {PATHS['features']} (default: .)")
    parser.add_argument("--ks", required=True, metavar="K,K,...", help="numbers of clusters to try, e.g. 3,5,8,12")
    parser.add_argument("--out", type=Path, default=Path(PATHS["k_sweep"]), metavar="PREFIX",
                        help=f"writes PREFIX.json and PREFIX.png (default: {PATHS['k_sweep']})")
    parser.add_argument("--seed", type=cli_int, default=None, help="probe seed (default: the run's seed)")
    parser.add_argument("--steps", type=cli_int, default=None, help="probe steps per K (default: the run's train.steps)")
    parser.add_argument("--restarts", type=cli_int, default=3,
                        help="probe fits per K, the best on the training codes kept (default: 3)")
    parser.add_argument("--init", choices=INITS, default="codes",
                        help="initial centroids: random training codes (default) or the probe's N(0,1) draw as in training")
    parser.add_argument("--alpha", type=float, default=None,
                        help="cluster-probe temperature (default: the run's, as its cluster stage recorded it; else 2.0)")
    parser.add_argument("--no-flip", action="store_true",
                        help="score val codes without flip averaging (on when the run's cluster stage used it)")


def sweep_from_args(args: argparse.Namespace) -> int:
    """Run `stego sweep-k` and print one line per K.

    Returns:
        0.
    """
    from stego_tasks.method.model import MODEL_JSON, MODEL_WEIGHTS, holds_model
    from stego_tasks.tools.sweep import out_paths, parse_ks, sweep_k
    from stego_tasks.tools.trained_run import run_settings

    ks = parse_ks(args.ks)
    run = Path(args.run)
    model_dir, store = run_path(run, "model"), run_path(run, "features")
    if not holds_model(model_dir):
        raise MissingInputError(
            f"{run} holds no trained model ({PATHS['model']}/{MODEL_JSON} + {MODEL_WEIGHTS}); "
            "pass --run the folder of a run whose `stego train` finished."
        )
    if not store.is_dir():
        raise MissingInputError(f"{run} holds no features store ({PATHS['features']}); run `stego extract` first.")
    settings = run_settings(run)
    alpha = settings.alpha if args.alpha is None else args.alpha
    out_json, out_png = out_paths(args.out)
    rows = sweep_k(store, model_dir, ks, out_json, out_png, seed=args.seed, steps=args.steps, alpha=alpha,
                   flip=settings.flip and not args.no_flip, restarts=args.restarts, init=args.init)
    for row in rows:
        scores = "" if row["miou"] is None else f"  mIoU {row['miou']:.1f}  accuracy {row['accuracy']:.1f}"
        print(f"K={row['k']:<3d} criterion {row['criterion']:.4f} (train {row['train_criterion']:.4f}){scores}")
    print(f"wrote {out_json} and {out_png}")
    return 0


# --- stego seeds -------------------------------------------------------------------------


def add_seeds_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego seeds` arguments."""
    parser.add_argument("n", type=cli_int, metavar="N", help="number of seeds")
    parser.add_argument("--first", type=cli_int, default=0, help="first seed (default 0)")
    parser.add_argument("--prefix", default="seed", help="experiment name prefix (default: seed)")


def seeds_from_args(args: argparse.Namespace) -> int:
    """Run `stego seeds` and print the table."""
    from flows.seeds import run_seeds
    from stego_tasks.tools.seeds import format_table

    if args.n < 1:
        raise InvalidInputError(f"stego seeds needs N >= 1 seeds, got {args.n}.")
    summary = run_seeds(list(range(args.first, args.first + args.n)), prefix=args.prefix)
    print(format_table(summary))
    print(f"written to {PATHS['seeds']} (and shown by `stego report`)")
    return 0


# --- stego names init ---------------------------------------------------------------------


def add_names_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego names init` arguments."""
    parser.add_argument("action", choices=["init"], help="init: write a starting names file from the run")
    parser.add_argument("--run", type=Path, default=Path("."), metavar="DIR", help="project folder of a finished run (default: .)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help=f"names file to write (default: {PATHS['cluster_names']} of --run)")
    parser.add_argument("--force", action="store_true", help="replace a names file that already names clusters")


def names_from_args(args: argparse.Namespace) -> int:
    """Run `stego names init` and say what was written."""
    from stego_tasks.tools.names_init import write_init

    result = write_init(args.run, args.out or run_path(args.run, "cluster_names"), force=args.force)
    suggested = f", {result['suggested']} named after the classes the labels matched" if result["suggested"] else ""
    print(f"wrote {result['out']}: {result['clusters']} clusters{suggested}; edit the names, then `dvc repro`.")
    return 0


# --- stego export ------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `stego export` arguments."""
    parser.add_argument("--run", type=Path, default=Path("."), metavar="DIR", help="project folder of a finished run (default: .)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="export folder (new, empty, or an earlier export)")
    parser.add_argument("--predictions", type=Path, default=None, metavar="DIR",
                        help="a folder `stego predict` wrote (default: the run's val predictions)")
    parser.add_argument("--split", choices=["train", "val"], default=None,
                        help="corpus split to write (default: val for the run's val split, train for --predictions)")


def export_from_args(args: argparse.Namespace) -> int:
    """Run `stego export` and print what it wrote."""
    from stego_tasks.data.adapters.core import CORPUS_FILE
    from stego_tasks.tools.export import ANNOTATIONS, export

    result = export(args.run, args.out, args.predictions, args.split)
    print(f"wrote {result['out']}: {ANNOTATIONS} (COCO, {result['annotations']} RLE masks over {result['images']} images, "
          f"{result['classes']} categories) and images/{result['split']} + labels/{result['split']} ({CORPUS_FILE})")
    return 0


# Each tool: (help saying what it reads and writes, add its arguments, run it from parsed arguments).
TOOLS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "predict": (
        f"Segment new images with a trained run: reads IMAGES_OR_DIR and the run's {PATHS['model']}, "
        f"{PATHS['assignment']}, {PATHS['cluster_names']} and the alpha, flip and CRF settings its cluster and crf "
        "stages recorded; writes to --out, per image, its cluster map (palette PNG), an overlay, its class map (when the "
        "run had labels) and its named map (when clusters have names), and a legend of what it wrote.",
        add_predict_arguments, predict_from_args,
    ),
    "adapt": (
        "Turn a CocoStuff-27 / Cityscapes-27 / Potsdam(-3) download into a corpus folder (images, labels, corpus params).",
        add_adapt_arguments, adapt_from_args,
    ),
    "sweep-k": (
        f"Refit the cluster probe for several K on a trained run's stored codes (reads {PATHS['model']} and "
        f"{PATHS['features']}); writes PREFIX.json and PREFIX.png (unsupervised criterion and mIoU vs K).",
        add_sweep_arguments, sweep_from_args,
    ),
    "seeds": (
        "Run the pipeline for N seeds as DVC experiments (dvc exp run -S seed=...) and write mean ± sd of "
        f"every method's accuracy and mIoU to {PATHS['seeds']} (also shown in the report).",
        add_seeds_arguments, seeds_from_args,
    ),
    "params": (
        f"Describe {PARAMS_FILE}: --explain KEY (type, range, default, the stages that read it, published values), "
        "--schema writes the params JSON schema, --check-schema compares the committed one with the generated one.",
        add_params_arguments, params_from_args,
    ),
    "names": (
        f"`stego names init`: write a starting {PATHS['cluster_names']} from a run: every cluster, its size "
        f"(from the gallery in {PATHS['gallery']}), named after its matched class when the run had labels.",
        add_names_arguments, names_from_args,
    ),
    "export": (
        "Write a run's val predictions (or a folder `stego predict` wrote) as COCO JSON with RLE masks per image "
        f"and named category, and as a pseudo-labelled corpus (images, labels, corpus params); classes from {PATHS['cluster_names']}.",
        add_export_arguments, export_from_args,
    ),
}
