"""The `fastmsfd` command: demo, fit, predict, eval, info.

Errors are one clear line on stderr and a non-zero exit code, never a traceback (FASTMSFD_DEBUG=1 shows it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from .global_score import DEFAULT_DENSITY, DEFAULT_WEIGHT, DENSITIES
from .report import fmt, write_text
from .runtimes import PRECISIONS, RUNTIMES

GLOBAL_LAYER_DEFAULT, GLOBAL_WEIGHT_DEFAULT = "auto", str(DEFAULT_WEIGHT)

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
    p.add_argument("--backbone", default="efficientnet_lite0", help="teacher/student network (default: %(default)s)")
    p.add_argument("--layers", default=None, help="comma-separated layers, e.g. stage2,stage3,stage4")
    p.add_argument("--image-size", type=_image_size, default="auto",
                   help="every image is resized to this: auto (the default: the training images' aspect at about "
                        "256x256 pixels, printed by fit), one number (a square) or HEIGHTxWIDTH, e.g. 512x192")
    p.add_argument("--resize", default="squash", choices=["squash", "keep_aspect"],
                   help="squash (default): stretch to the image size; keep_aspect: fit inside it, the rest filled "
                        "by repeating the edge pixels")
    p.add_argument("--tile", type=_image_size, default=None,
                   help="run the networks on overlapping tiles of this size (one number or HEIGHTxWIDTH) cut from "
                        "the resized image, stitched without seams (default: the whole image at once)")
    p.add_argument("--overlap", type=float, default=0.25,
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
    p.add_argument("--global-layer", default=GLOBAL_LAYER_DEFAULT,
                   help="the global branch's teacher layer (pooled features, a density of normal images, fused "
                        "with the map score): auto (the backbone's default), a layer name or several "
                        "(stage5,stage6: pooled side by side), or none (default: %(default)s)")
    p.add_argument("--global-backbone", default="auto",
                   help="the global branch's own teacher: auto (a larger EfficientNet-Lite for EfficientNet-Lite "
                        "maps), a backbone name, or none (the map's teacher) (default: %(default)s)")
    p.add_argument("--global-image-size", type=_global_image_size, default="auto",
                   help="what the global branch sees: the whole image at about N x N pixels in the input's aspect "
                        "(one number; never more than the input), at HEIGHTxWIDTH, none: at the networks' input "
                        "(the tile's size with tiles), or auto: 192 for the Lite2 branch, else none (default: auto)")
    p.add_argument("--global-density", choices=DENSITIES, default=DEFAULT_DENSITY,
                   help="the global score: the distance to the nearest training image's pooled features (nearest) "
                        "or the Mahalanobis distance to their Gaussian (gaussian) (default: %(default)s)")
    p.add_argument("--global-weight", default=GLOBAL_WEIGHT_DEFAULT,
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


def _global_weight(value: str):
    return value if value == "auto" else float(value)


def _choice_or_none(value: str) -> str | None:
    """A "none" choice on the command line is None in the API."""
    return None if value == "none" else value


def _add_map_norm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map-norm", default="border", choices=["border", "none"],
                   help="border (default): standardise each heatmap pixel by normal heatmaps at the same distance "
                        "from the image border, measured at fit time; none: score the raw heatmap")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="inference runtime (default: auto = the fastest for this CPU; `fastmsfd info` says which)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="network precision (default: float32, or the checkpoint's); auto: bfloat16 where the CPU "
                        "computes it natively and measurements showed no accuracy loss")


def _build_detector(args):
    from . import Detector

    layers = args.layers.split(",") if args.layers else None
    return Detector(backbone=args.backbone, layers=layers, image_size=args.image_size, weights=args.weights,
                    runtime=args.runtime, precision=args.precision or "float32",
                    map_norm=_choice_or_none(args.map_norm), global_layer=_choice_or_none(args.global_layer),
                    global_weight=_global_weight(args.global_weight), resize=args.resize, tile=args.tile,
                    global_backbone=_choice_or_none(args.global_backbone),
                    global_image_size=args.global_image_size, global_density=args.global_density,
                    overlap=args.overlap)


def _load_detector(path, args):
    """A checkpoint with the command's --runtime/--precision applied."""
    from . import Detector

    return Detector.load(path, runtime=getattr(args, "runtime", "auto"), precision=getattr(args, "precision", None))


def _fit(det, data, args, state_path=None, resume=False):
    return det.fit(data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   augment=_choice_or_none(args.augment), crop_scale=args.crop_scale, progress=not args.quiet,
                   state_path=None if state_path is None else str(state_path), resume=resume)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, image_size=args.image_size, epochs=args.epochs, lr=args.lr, seed=args.seed,
             score_topk=args.score_topk, map_norm=_choice_or_none(args.map_norm),
             augment=_choice_or_none(args.augment), progress=not args.quiet)
    return 0


def cmd_fit(args) -> int:
    from .distributed import is_main_process, launched_by_torchrun

    state = Path(str(args.output) + ".state")
    if state.exists() and not args.resume and not launched_by_torchrun():
        raise ValueError(f"{state}: an interrupted run's training state is here; pass --resume to continue it "
                         "or delete it to start afresh")
    try:
        det = _fit(_build_detector(args), args.data, args, state_path=state, resume=args.resume)
    except KeyboardInterrupt:
        if state.exists():
            print(f"fastmsfd: interrupted; the last completed epoch is saved in {state}: run the same command "
                  "with --resume to continue", file=sys.stderr)
            return 130
        raise
    if not is_main_process():  # torchrun: every process holds the same model; the first one writes it
        return 0
    det.save(args.output)
    state.unlink(missing_ok=True)
    h = det.history
    print(f"fitted {det!r}\n  {len(h.val_loss)} epochs in {h.seconds:.1f}s, best held-out loss "
          f"{min(h.val_loss):.4f} at epoch {h.best_epoch + 1}; saved {args.output}")
    if "geometry" in det.info:
        g = det.info["geometry"]
        print(f"  image_size auto: {g['image_size'][0]}x{g['image_size'][1]} (height x width), {g['how']} "
              f"({g['n_images']})")
    return 0


def cmd_predict(args) -> int:
    from .batch import expand_paths, score_files, write_scores

    out = Path(args.out)
    if args.ray:
        results, thr = _predict_on_ray(args, out)
    else:
        det = _load_detector(args.model, args)
        thr = float(det.threshold)
        results = score_files(det, expand_paths(args.images), args.batch_size,
                              None if args.no_overlays else out / "overlays", progress=not args.quiet)
    write_scores(out / "scores.csv", results)
    bad = [r for r in results if r.error]
    n_anom = sum(1 for r in results if r.anomalous)
    print(f"{len(results) - len(bad)} images scored ({n_anom} anomalous at threshold {thr:.4g}), "
          f"{len(bad)} unreadable; wrote {out / 'scores.csv'}")
    for r in bad:
        print(f"  skipped: {r.error}", file=sys.stderr)
    if bad and (args.strict or len(bad) == len(results)):
        return 1
    return 0


def _predict_on_ray(args, out: Path):
    """predict --ray: the same scores.csv, computed by Ray Data (fastmsfd/ray.py); heatmaps (--heatmaps) instead
    of overlays."""
    from . import ray as fray
    from .checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(args.model)  # a bad model file fails here, before Ray starts
    ray = fray.init(args.ray)
    ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
    ds = fray.predict(args.images, args.model, batch_size=args.batch_size, actors=args.actors,
                      runtime=args.runtime, heatmaps=args.heatmaps,
                      heatmap_dir=out / "heatmaps" if args.heatmaps else None)
    rows = list(ds.iter_rows())
    results = fray.rows_to_scores(rows)
    return results, float(tensors["threshold"][0]) if "threshold" in tensors else float("nan")


def _eval_categories(args):
    from .datasets import discover, folders_dataset

    if args.good or args.defect:
        if not (args.good and args.defect):
            raise ValueError("the plain-folders layout needs both --good and --defect")
        return [folders_dataset(args.good, args.defect, args.masks, args.train, seed=args.seed)]
    if not args.data:
        raise ValueError("give a dataset folder (MVTec category or root, ShanghaiTech root) or --good/--defect")
    return discover(args.data, args.category, args.layout)


def _checkpoint_for(args, category: str) -> Path:
    ckpt = Path(args.checkpoint)
    if ckpt.is_dir():
        path = ckpt / f"{category}.fastmsfd"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint for category {category!r} in {ckpt} "
                                    "(expected <category>.fastmsfd)")
        return path
    return ckpt


def cmd_eval(args) -> int:
    from .datasets import require_train
    from .evaluate import evaluate
    from .report import category_entry, overlay_grid, plot_curves, write_summary

    cats = _eval_categories(args)
    if args.checkpoint and len(cats) > 1 and not Path(args.checkpoint).is_dir():
        raise ValueError(f"{len(cats)} categories to evaluate: give -c a folder of <category>.fastmsfd files")
    out = Path(args.out)
    entries, configs = [], {}
    for cat in cats:
        fit_s = None
        if args.checkpoint:
            det = _load_detector(_checkpoint_for(args, cat.name), args)
        else:
            t0 = time.perf_counter()
            det = _fit(_build_detector(args), require_train(cat), args)
            fit_s = time.perf_counter() - t0
            det.save(out / "models" / f"{cat.name}.fastmsfd")
        res = evaluate(det, cat, full_res=args.full_res, batch_size=args.batch_size, progress=not args.quiet)
        if not args.no_plots:
            plot_curves(res, out / "plots")
            overlay_grid(res, out / "overlays" / f"{cat.name}_grid.png")
        epochs = det.config.get("epochs_run")
        entries.append(category_entry(res, fit_s, dict(epochs_run=epochs, layout=cat.kind, n_train=len(cat.train),
                                                       runtime=det.runtime, precision=det.config["precision"])))
        configs[cat.name] = {k: v for k, v in det.config.items() if k != "layers"} | {"layers": det.config["layers"]}
        print(f"{cat.name} ({res.resolution}): " + ", ".join(f"{k} {fmt(v)}" for k, v in res.metrics.items()) +
              ("" if fit_s is None else f", fit {fit_s:.0f}s") + f", eval {res.seconds:.0f}s")
        for note in res.notes:
            print(f"  note: {note}")
        del res  # heatmaps of one category at a time
    meta = dict(command="fastmsfd " + " ".join(shlex.quote(a) for a in args.argv), seed=args.seed,
                full_res=args.full_res, detector=configs)
    table = write_summary(out, entries, meta)
    print(table)
    print(f"wrote {out / 'metrics.json'}, {out / 'results.md'}" + ("" if args.no_plots else ", plots/, overlays/"))
    return 0


def cmd_export(args) -> int:
    from . import Detector

    det = Detector.load(args.model, runtime="torch")
    H, W = det.input_hw
    if args.format == "triton":
        from .triton_repo import write_triton_repository

        folder = write_triton_repository(det, args.output, args.name, args.max_batch)
        print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx: Triton Inference Server, ONNX Runtime "
              f"backend, input 'images' uint8 [3, {H}, {W}], outputs 'heatmap' and 'score', dynamic batching up to "
              f"{args.max_batch}; threshold {float(det.threshold):.6g} in its parameters")
        return 0
    path = det.export_onnx(args.output, dynamic_batch=not args.fixed_batch)
    size_mb = Path(path).stat().st_size / 1e6
    print(f"wrote {path} ({size_mb:.1f} MB): input 'images' uint8 (batch, 3, {H}, {W}) "
          f"RGB, outputs 'heatmap' and 'score'; threshold {float(det.threshold):.6g} and preprocessing in its "
          "metadata")
    return 0


def cmd_bench(args) -> int:
    from .bench import markdown, run_bench

    results = []
    for backbone in args.backbone:
        for batch in args.batch:
            print(f"{backbone}, {args.image_size}x{args.image_size}, batch {batch}:")
            results.append(run_bench(backbone, args.image_size, batch, tuple(args.runtime), tuple(args.precision),
                                     reps=args.reps, device=args.device, compile=args.compile))
    for r in results:
        print("\n" + markdown(r))
    if args.json:
        write_text(Path(args.json), json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeConfig, serve

    cfg = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb,
                      max_queue=args.max_queue, timeout_s=args.timeout_s)
    det = _load_detector(args.model, args)  # a bad model file fails here, before the server starts
    serve(det, args.host, args.port, cfg, log_level="warning" if args.quiet else "info")
    return 0


def cmd_info(args) -> int:
    import torch

    from . import __version__, ops
    from .backbones import backbone_names, find_weights_file

    print(f"fastmsfd {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("op backends (cpu):")
    for name, why in ops.backend_status("cpu").items():
        print(f"  {name:10s} {'available' if why is None else 'unavailable: ' + why}")
    from .runtimes import choose, cpu_info, runtime_status

    cpu = cpu_info()
    print(f"cpu: {cpu.model}; ISA: {', '.join(sorted(cpu.flags)) or 'none of AVX2/AVX-512/AMX'}; "
          f"native bf16: {'yes' if cpu.native_bf16 else 'no'}")
    print("inference runtimes:")
    for name, why in runtime_status().items():
        print(f"  {name:12s} {'available' if why is None else 'unavailable: ' + why}")
    print("what auto picks on this machine (cpu):")
    for precision in ("float32", "auto"):
        c = choose("auto", torch.device("cpu"), precision)
        print(f"  runtime=auto precision={precision:8s} -> {c.runtime} {c.precision} ({c.reason})")
    print("pretrained weights found offline:")
    for name in backbone_names():
        path = find_weights_file(name)
        print(f"  {name:20s} {path if path else 'not found'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmsfd", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="fit, predict and evaluate on the built-in texture demo (a few minutes)",
                       description="Builds an MVTec-layout dataset from scikit-image's brick, gravel and grass "
                                   "photographs with synthetic defects, fits one detector per texture, evaluates "
                                   "it and writes overlays, scores and a summary.")
    p.add_argument("--out", default="demo_output", help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--image-size", type=int, default=128)
    # 3e-3, not fit's 1e-3: on these small 128 px texture sets 40 epochs at 1e-3 leave the student far from
    # converged, and 3e-3 is better over three seeds (docs/training.md, "Learning rate at the default budget")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--score-topk", type=float, default=0.01, help="image score: mean of the top fraction")
    _add_map_norm_arg(p)
    # flips: the demo's textures look the same mirrored; over three seeds they keep the mean image AUROC and
    # narrow its range (docs/defaults.md, "Border calibration")
    p.add_argument("--augment", default="flip", choices=["none", "flip", "dihedral"],
                   help="random flips (and 90-degree turns) of the normal images while training "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("fit", help="fit a detector on normal images and save it",
                       description="Fits on defect-free images: a folder (searched recursively) or an MVTec "
                                   "category folder (its train/good is used). 10%% are held out for early "
                                   "stopping, per-layer weights and the threshold.")
    p.add_argument("data", help="folder of normal images or MVTec category folder")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.fastmsfd)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUTPUT.state (written after every epoch)")
    _add_model_args(p)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("predict", help="score images; write heatmap overlays and scores.csv",
                       description="Scores image files and folders. Unreadable files are listed with the reason "
                                   "and skipped; the exit code is non-zero for them only with --strict.")
    p.add_argument("model", help="a .fastmsfd checkpoint")
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
    _add_inference_args(p)
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("eval", help="fit per category (or load) and evaluate: metrics, plots, overlays, report",
                       description="Evaluates on an MVTec AD category folder or a root of categories (each fitted "
                                   "on its train/good, then the mean), a ShanghaiTech Campus root, or plain "
                                   "folders (--good/--defect [--masks] [--train]). Writes metrics.json, "
                                   "results.md, plots/ (ROC, PRO) and overlays/ to --out.")
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
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint to ONNX or a Triton Inference Server model repository",
                       description="One ONNX graph: uint8 RGB images resized to image_size -> heatmap and score, "
                                   "normalisation inside; threshold and preprocessing in the metadata.")
    p.add_argument("model", help="a .fastmsfd checkpoint")
    p.add_argument("-o", "--output", required=True,
                   help="the .onnx file to write, or the model repository folder with --format triton")
    p.add_argument("--format", default="onnx", choices=["onnx", "triton"],
                   help="onnx: one file; triton: a Triton Inference Server model repository "
                        "(OUTPUT/NAME/config.pbtxt + OUTPUT/NAME/1/model.onnx)")
    p.add_argument("--name", default="fastmsfd", help="model name in the Triton repository (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size (default: %(default)s)")
    p.add_argument("--fixed-batch", action="store_true", help="onnx: a fixed batch of 2 instead of a dynamic batch")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("bench", help="end-to-end speed of each runtime beside the naive eager pipeline",
                       description="Batch-1 latency and batched throughput, from uint8 images and from JPEG files, "
                                   "for each available runtime and precision, with the ratio to the naive eager "
                                   "pipeline (float32, NCHW, full backbone, reference ops) measured in the same run.")
    p.add_argument("--backbone", nargs="+", default=["efficientnet_lite0"])
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
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("serve", help="an HTTP service: /predict, /health, /metadata, a web page at /",
                       description="Serves a checkpoint over HTTP (FastAPI + uvicorn): POST images to /predict, "
                                   "open / in a browser, OpenAPI docs at /docs. Concurrent requests are "
                                   "micro-batched. Needs the serve extra: pip install fastmsfd[serve].")
    p.add_argument("model", help="a .fastmsfd checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="images per model call (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first image of a batch waits for more (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=50.0, help="request body limit (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="images waiting for the model before requests get 503 (default: %(default)s)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (default: %(default)s)")
    _add_inference_args(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("info", help="backends, compiled extensions and pretrained weights available here")
    p.set_defaults(fn=cmd_info)
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
