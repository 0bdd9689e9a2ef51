"""The `fastmsfd` command: its options (every default read from config.py) and main(); the commands' bodies
are in commands.py.

Errors are one clear line on stderr and a non-zero exit code, never a traceback (FASTMSFD_DEBUG=1 shows it).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import commands
from .config import MAP_NORMS, GeometrySettings, MapSettings, NetworkSettings, RuntimeSettings, ScoreSettings
from .geometry import RESIZE_POLICIES
from .global_score import DENSITIES
from .monitor import DriftSettings
from .runtimes import PRECISIONS, RUNTIMES

# every default is config.py's: the options show them, and commands.build_detector passes what was given
NET, GEO, MAP, SCORE, RUN = NetworkSettings(), GeometrySettings(), MapSettings(), ScoreSettings(), RuntimeSettings()


def _none_word(value):
    """A None default as the command line spells it."""
    return "none" if value is None else value

DESCRIPTION = """Fast Multi-Scale Feature Distillation anomaly detection.

  fastmsfd demo                       fit, predict and evaluate on the built-in texture demo
  fastmsfd fit DATA -o model.fastmsfd fit on normal images (a folder or an MVTec category folder)
  fastmsfd predict model.fastmsfd IMAGES... -o out/   heatmap overlays + scores.csv
  fastmsfd eval DATA [-c model.fastmsfd] -o report/   fit per category, evaluate, write a report
  fastmsfd export model.fastmsfd -o model.onnx       one ONNX graph: image -> heatmap, score
  fastmsfd bench [--backbone B] [--batch N]          speed of every runtime beside the naive pipeline
  fastmsfd serve model.fastmsfd [--port 8000]        HTTP service with micro-batching and a web page
  fastmsfd info                       backends, extensions and pretrained weights found here
"""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=NET.backbone, help="teacher/student network (default: %(default)s)")
    p.add_argument("--layers", default=None,
                   help="the heatmap's layers, comma-separated, e.g. stage2,stage3,stage4 (default: the backbone's)")
    p.add_argument("--score-layers", default=None,
                   help="the layers whose map gives the map score, when they differ from the heatmap's, e.g. "
                        "stage4,stage5,stage6 (default: the heatmap's own score)")
    p.add_argument("--image-size", type=_image_size, default=GEO.image_size,
                   help="every image is resized to this: auto (the default: the training images' aspect at about "
                        "256x256 pixels, printed by fit), one number (a square) or HEIGHTxWIDTH, e.g. 512x192")
    p.add_argument("--resize", default=GEO.resize, choices=RESIZE_POLICIES,
                   help="squash: stretch to the image size; keep_aspect: fit inside it, the rest filled "
                        "by repeating the edge pixels (default: %(default)s)")
    p.add_argument("--tile", type=_image_size, default=GEO.tile,
                   help="run the networks on overlapping tiles of this size (one number or HEIGHTxWIDTH) cut from "
                        "the resized image, stitched without seams (default: the whole image at once)")
    p.add_argument("--overlap", type=float, default=GEO.overlap,
                   help="least overlap of neighbouring tiles, a fraction of a tile (default: %(default)s)")
    p.add_argument("--weights", default=None, help="teacher weights file (default: resolve offline)")
    p.add_argument("--epochs", type=int, default=None,
                   help="maximum epochs; early stopping may end sooner (default: about 3,000 training images seen, "
                        "at most 40 epochs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s; docs/training.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", default="none", choices=["none", "flip", "dihedral"],
                   help="random flips (and 90-degree turns) of the training images, for parts that look the same "
                        "mirrored (default: %(default)s)")
    p.add_argument("--crop-scale", type=float, default=None,
                   help="train on random crops of at least this share of each side, resized back (default: the "
                        "whole image; with --tile the tiles are cut from the cropped image)")
    _add_map_norm_arg(p)
    p.add_argument("--global-layer", default=_none_word(SCORE.global_layer),
                   help="the global branch's teacher layer (pooled features, a density of normal images, fused "
                        "with the map score): auto (the backbone's default), a layer name or several "
                        "(stage5,stage6: pooled side by side), or none (default: %(default)s)")
    p.add_argument("--global-backbone", default=_none_word(SCORE.global_backbone),
                   help="the global branch's own teacher: auto (a larger EfficientNet-Lite for EfficientNet-Lite "
                        "maps), a backbone name, or none (the map's teacher) (default: %(default)s)")
    p.add_argument("--global-image-size", type=_global_image_size, default=SCORE.global_image_size,
                   help="what the global branch sees: the whole image at about N x N pixels in the input's aspect "
                        "(one number; never more than the input), at HEIGHTxWIDTH, none: at the networks' input "
                        "(the tile's size with tiles), or auto: 192 for the Lite2 branch, else none "
                        "(default: %(default)s)")
    p.add_argument("--global-density", choices=DENSITIES, default=SCORE.global_density,
                   help="the global score: the distance to the nearest training image's pooled features (nearest) "
                        "or the Mahalanobis distance to their Gaussian (gaussian) (default: %(default)s)")
    p.add_argument("--global-weight", default=str(SCORE.global_weight),
                   help="the global score's share of the image score in [0, 1], or auto: chosen at fit time with "
                        "synthetic defects on held-out normal images (default: %(default)s)")
    _add_inference_args(p)


def _image_size(value: str):
    """256 -> 256; 512x192 -> (512, 192) (height x width); auto -> "auto"."""
    if value.lower() == "auto":
        return "auto"
    parts = value.lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give one number or HEIGHTxWIDTH, e.g. 256 or 512x192") from None
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{value!r}: give one number or HEIGHTxWIDTH, e.g. 256 or 512x192")
    return sides[0] if len(sides) == 1 else tuple(sides)


def _global_image_size(value: str):
    """none -> None, auto -> "auto", else one number or HEIGHTxWIDTH as --image-size."""
    return None if value.lower() == "none" else _image_size(value)


def _add_map_norm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map-norm", default=_none_word(MAP.map_norm), choices=[_none_word(m) for m in MAP_NORMS],
                   help="border: standardise each heatmap pixel by normal heatmaps at the same distance "
                        "from the image border, measured at fit time; none: score the raw heatmap "
                        "(default: %(default)s)")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default=RUN.runtime, choices=RUNTIMES,
                   help="inference runtime (default: auto = the fastest for this CPU; `fastmsfd info` says which)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help=f"network precision (default: {NET.precision}, or the checkpoint's); auto: bfloat16 where "
                        "the CPU "
                        "computes it natively and measurements showed no accuracy loss")


def _add_drift_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drift-window", type=int, default=DriftSettings.window,
                   help="recent images the drift alarm tests (default: %(default)s; docs/serving.md)")
    p.add_argument("--drift-alpha", type=float, default=DriftSettings.alpha,
                   help="the drift tests' significance: the alarm rises when a p-value is under half of it "
                        "(default: %(default)s)")


def _add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .fastmsfd checkpoint")


def _command(sub, name: str, fn, **kwargs) -> argparse.ArgumentParser:
    """A subcommand's parser that runs fn (commands.py) with the parsed arguments; fn's docstring is its
    description."""
    p = sub.add_parser(name, description=" ".join((fn.__doc__ or "").split()), **kwargs)
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmsfd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "demo", commands.cmd_demo,
                 help="fit, predict and evaluate on the built-in texture demo (a few minutes)")
    p.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--image-size", type=int, default=128)
    # 3e-3, not fit's 1e-3: on these small 128 px texture sets 40 epochs at 1e-3 leave the student far from
    # converged, and 3e-3 is better over three seeds (docs/training.md, "Learning rate at the default budget")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--score-topk", type=float, default=SCORE.score_topk,
                   help="image score: mean of the top fraction (default: %(default)s)")
    _add_map_norm_arg(p)
    # flips: the demo's textures look the same mirrored; over three seeds they keep the mean image AUROC and
    # narrow its range (docs/defaults.md, "Border calibration")
    p.add_argument("--augment", default="flip", choices=["none", "flip", "dihedral"],
                   help="random flips (and 90-degree turns) of the normal images while training "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)

    p = _command(sub, "fit", commands.cmd_fit,
                 help="fit a detector on normal images and save it")
    p.add_argument("data", help="folder of normal images or MVTec category folder")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.fastmsfd)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUTPUT.state (written after every epoch)")
    _add_model_args(p)

    p = _command(sub, "predict", commands.cmd_predict,
                 help="score images; write heatmap overlays and scores.csv")
    _add_checkpoint_arg(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("-o", "--out", default="predictions", help="output folder (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file could not be read")
    p.add_argument("--no-overlays", action="store_true", help="only write scores.csv")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="local|ADDRESS",
                   help="run on Ray Data: a local cluster (default) or the cluster at ADDRESS (e.g. auto, "
                        "ray://head:10001); IMAGES may then be any path Ray Data reads (docs/scale-out.md)")
    p.add_argument("--actors", type=int, default=None, help="--ray: detector actors (default: from the cluster)")
    p.add_argument("--heatmaps", choices=["npy", "png"], default=None,
                   help="--ray: also write heatmaps under OUT/heatmaps (npy shards or one png per image)")
    _add_drift_args(p)
    _add_inference_args(p)

    p = _command(sub, "eval", commands.cmd_eval,
                 help="fit per category (or load) and evaluate: metrics, plots, overlays, report")
    p.add_argument("data", nargs="?", help="MVTec category or root, or ShanghaiTech Campus root")
    p.add_argument("--category", help="evaluate only this category of a root")
    p.add_argument("--layout", default="auto", choices=["auto", "mvtec", "stc"], help="dataset layout of DATA")
    p.add_argument("--good", help="plain folders: normal test images (and training images without --train)")
    p.add_argument("--defect", help="plain folders: defective test images")
    p.add_argument("--masks", help="plain folders: masks named <stem>.* or <stem>_mask.*")
    p.add_argument("--train", help="plain folders: normal training images")
    p.add_argument("-c", "--checkpoint", help="evaluate this checkpoint (or folder of <category>.fastmsfd) "
                                             "instead of fitting")
    p.add_argument("-o", "--out", default="eval_report", help="report folder (default: %(default)s)")
    p.add_argument("--full-res", action="store_true", help="evaluate at each image's original size")
    p.add_argument("--no-plots", action="store_true", help="only metrics.json and results.md")
    _add_model_args(p)

    p = _command(sub, "export", commands.cmd_export,
                 help="export a checkpoint to ONNX or a Triton Inference Server model repository")
    _add_checkpoint_arg(p)
    p.add_argument("-o", "--output", required=True,
                   help="the .onnx file to write, or the model repository folder with --format triton")
    p.add_argument("--format", default="onnx", choices=["onnx", "triton"],
                   help="onnx: one file; triton: a Triton Inference Server model repository "
                        "(OUTPUT/NAME/config.pbtxt + OUTPUT/NAME/1/model.onnx)")
    p.add_argument("--name", default="fastmsfd", help="model name in the Triton repository (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size (default: %(default)s)")
    p.add_argument("--fixed-batch", action="store_true", help="onnx: a fixed batch of 2 instead of a dynamic batch")

    p = _command(sub, "bench", commands.cmd_bench,
                 help="end-to-end speed of each runtime beside the naive eager pipeline")
    p.add_argument("--backbone", nargs="+", default=[NET.backbone])
    p.add_argument("--batch", nargs="+", type=int, default=[8])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--runtime", nargs="+", default=["torch", "onnxruntime", "openvino"])
    p.add_argument("--precision", nargs="+", default=["float32"], choices=[p for p in PRECISIONS if p != "auto"],
                   help="precisions to measure; a runtime that cannot run one is skipped")
    p.add_argument("--reps", type=int, default=10, help="repetitions per measurement (median reported)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the exported runtimes run on the CPU only)")
    p.add_argument("--compile", nargs="?", const=True, default=False,
                   help="torch.compile the torch runtime's networks (optionally a mode, e.g. reduce-overhead: CUDA "
                        "graphs on a GPU)")
    p.add_argument("--json", help="also write the results as JSON here")

    p = _command(sub, "serve", commands.cmd_serve,
                 help="an HTTP service: /predict, /health, /metadata, a web page at /")
    _add_checkpoint_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="images per model call (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first image of a batch waits for more (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=50.0, help="request body limit (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="images waiting for the model before requests get 503 (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (default: %(default)s)")
    p.add_argument("--token", help="access token clients send as 'Authorization: Bearer <token>' (default: "
                                   "$FASTMSFD_TOKEN); required unless the server listens on loopback only")
    p.add_argument("--insecure-no-token", action="store_true",
                   help="listen beyond loopback without a token (anyone reaching the port can use and replace the "
                        "model)")
    p.add_argument("--ssl-certfile", help="HTTPS: the certificate (PEM), with --ssl-keyfile")
    p.add_argument("--ssl-keyfile", help="HTTPS: the private key (PEM)")
    _add_drift_args(p)
    _add_inference_args(p)

    p = _command(sub, "info", commands.cmd_info,
                 help="backends, compiled extensions and pretrained weights available here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    from .errors import FastMSFDError

    try:
        return args.fn(args)
    except (FastMSFDError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if os.environ.get("FASTMSFD_DEBUG"):
            raise
        print(f"fastmsfd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmsfd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
