"""The `fastmsfd` commands' bodies: each takes the parsed arguments (cli.py builds the parser) and returns the
exit code."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from .config import GeometrySettings, MapSettings, NetworkSettings, ScoreSettings
from .report import fmt, write_text


def global_weight(value: str):
    return value if value == "auto" else float(value)


def choice_or_none(value: str) -> str | None:
    """A "none" choice on the command line is None in the API."""
    return None if value == "none" else value


def build_detector(args):
    from . import Detector

    layers = args.layers.split(",") if args.layers else None
    return Detector(args.backbone, layers, args.image_size, weights=args.weights, runtime=args.runtime,
                    precision=args.precision or NetworkSettings().precision,
                    geometry=GeometrySettings(args.image_size, args.resize, args.tile, args.overlap),
                    heatmap=MapSettings(map_norm=choice_or_none(args.map_norm)),
                    score=ScoreSettings(score_layers=args.score_layers.split(",") if args.score_layers else None,
                                        global_layer=choice_or_none(args.global_layer),
                                        global_backbone=choice_or_none(args.global_backbone),
                                        global_image_size=args.global_image_size, global_density=args.global_density,
                                        global_weight=global_weight(args.global_weight)))


def load_detector(path, args):
    """A checkpoint with the command's --runtime/--precision applied."""
    from . import Detector

    return Detector.load(path, runtime=getattr(args, "runtime", "auto"), precision=getattr(args, "precision", None))


def drift_settings(args):
    """The drift alarm's settings from --drift-window and --drift-alpha (a verdict from a quarter window on)."""
    from .monitor import DriftSettings

    window = args.drift_window
    return DriftSettings(window=window, min_images=max(1, min(window // 4, 50)), alpha=args.drift_alpha)


def _fit(det, data, args, state_path=None, resume=False):
    return det.fit(data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   augment=choice_or_none(args.augment), crop_scale=args.crop_scale, progress=not args.quiet,
                   state_path=None if state_path is None else str(state_path), resume=resume)


def cmd_demo(args) -> int:
    """Builds an MVTec-layout dataset from scikit-image's brick, gravel and grass photographs with synthetic
    defects, fits one detector per texture, evaluates it and writes overlays, scores and a summary."""
    from .demo import run_demo

    run_demo(args.out, image_size=args.image_size, epochs=args.epochs, lr=args.lr, seed=args.seed,
             score_topk=args.score_topk, map_norm=choice_or_none(args.map_norm),
             augment=choice_or_none(args.augment), progress=not args.quiet)
    return 0


def cmd_fit(args) -> int:
    """Fits on defect-free images: a folder (searched recursively) or an MVTec category folder (its train/good
    is used). 10% are held out for early stopping, per-layer weights and the threshold."""
    from .distributed import is_main_process, launched_by_torchrun

    state = Path(str(args.output) + ".state")
    if state.exists() and not args.resume and not launched_by_torchrun():
        raise ValueError(f"{state}: an interrupted run's training state is here; pass --resume to continue it "
                         "or delete it to start afresh")
    try:
        det = _fit(build_detector(args), args.data, args, state_path=state, resume=args.resume)
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
    """Scores image files and folders. Unreadable files are listed with the reason and skipped; the exit code is
    non-zero for them only with --strict."""
    from .batch import expand_paths, score_files, write_scores

    out = Path(args.out)
    drift = drift_settings(args)  # bad settings fail before any work
    if args.ray:
        results, thr = _predict_on_ray(args, out)
    else:
        det = load_detector(args.model, args)
        thr = float(det.threshold)
        results = score_files(det, expand_paths(args.images), args.batch_size,
                              None if args.no_overlays else out / "overlays", progress=not args.quiet)
    write_scores(out / "scores.csv", results)
    bad = [r for r in results if r.error]
    n_anom = sum(1 for r in results if r.anomalous)
    print(f"{len(results) - len(bad)} images scored ({n_anom} anomalous at threshold {thr:.4g}), "
          f"{len(bad)} unreadable; wrote {out / 'scores.csv'}")
    _report_drift(args.model, [r for r in results if r.score is not None], thr, drift, out)
    for r in bad:
        print(f"  skipped: {r.error}", file=sys.stderr)
    if bad and (args.strict or len(bad) == len(results)):
        return 1
    return 0


def _report_drift(model: str, scored, threshold: float, settings, out: Path) -> None:
    """The drift alarm over the scores in their order (fastmsfd.monitor): drift.json and one line."""
    from .checkpoint import read_info
    from .monitor import DriftMonitor, drift_report

    reference = read_info(model).get("calibration", {}).get("reference")
    if reference is None or not scored:
        print("drift: not checked (" + ("no images scored" if not scored else "the checkpoint has no drift "
                                        "reference: calibrate it again with this release") + ")")
        return
    monitor = DriftMonitor(reference, threshold, settings)
    report = drift_report(monitor, [r.score for r in scored], [r.path for r in scored])
    write_text(out / "drift.json", json.dumps(report, indent=2))
    said = "; ".join(f"{e['event']} at image {e['at_image']} ({e['name']})" for e in report["events"])
    print(f"drift: {said or 'no alarm'} over {len(scored)} images in order (window {settings.window}); "
          f"wrote {out / 'drift.json'}")


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
    """Evaluates on an MVTec AD category folder or a root of categories (each fitted on its train/good, then the
    mean), a ShanghaiTech Campus root, or plain folders (--good/--defect [--masks] [--train]). Writes
    metrics.json, results.md, plots/ (ROC, PRO) and overlays/ to --out."""
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
            det = load_detector(_checkpoint_for(args, cat.name), args)
        else:
            t0 = time.perf_counter()
            det = _fit(build_detector(args), require_train(cat), args)
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
    """One ONNX graph: uint8 RGB images resized to image_size -> heatmap, score and its parts, normalisation inside;
    threshold and preprocessing in the metadata."""
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
    """Batch-1 latency and batched throughput, from uint8 images and from JPEG files, for each available runtime
    and precision, with the ratio to the naive eager pipeline (float32, NCHW, full backbone, reference ops)
    measured in the same run."""
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
    """Serves a checkpoint over HTTP (FastAPI + uvicorn): POST images to /predict, open / in a browser, OpenAPI
    docs at /docs, Prometheus metrics at /metrics. Concurrent requests are micro-batched; a drift alarm watches
    the scores; SIGHUP or POST /admin/reload swaps the model file without downtime. Needs the serve extra: pip
    install fastmsfd[serve]."""
    from .serve import ServeConfig, serve
    from .serve.auth import TOKEN_ENV, check_bind

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_bind(args.host, token, args.insecure_no_token)  # before the model is read
    cfg = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb,
                      max_queue=args.max_queue, timeout_s=args.timeout_s, token=token,
                      drift=drift_settings(args))
    det = load_detector(args.model, args)  # a bad model file fails here, before the server starts
    serve(det, args.host, args.port, cfg, args.runtime, args.precision,
          log_level="warning" if args.quiet else "info", insecure_no_token=args.insecure_no_token,
          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, path=args.model)
    return 0


def cmd_info(args) -> int:
    """Backends, compiled extensions, runtimes and pretrained weights available on this machine, and what
    runtime and precision "auto" picks here."""
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
