"""Dataset layouts: MVTec AD (one category or a root of many), plain folders, ShanghaiTech Campus; and the normal
images fit() takes from any source (normal_images_u8).

Each reader returns Category objects: the normal training images and the labelled test samples with where their
masks live. Every problem names the path (fastmsfd.errors.DataError).

MVTec AD layout (also ../shared/data/mtd, kolektorsdd):
    <category>/train/good/*        <category>/test/<type>/*        <category>/ground_truth/<type>/<stem>_mask.*
ShanghaiTech Campus layout (video frames):
    training/frames/<video>/*.jpg          testing/frames/<video>/*.jpg
    test_frame_mask/<video>.npy  (per-frame 0/1)    test_pixel_mask/<video>.npy  (per-frame H x W masks)
Plain folders: a folder of good images, a folder of defect images, optional masks matched by file stem
(<stem>.* or <stem>_mask.*), and normal training images (a folder, or a seeded 80/20 split of the good folder).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import IMAGE_EXTENSIONS, list_images, load_resized, to_u8_batch
from .errors import DataError

LAYOUTS = ("auto", "mvtec", "folders", "stc")


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def training_paths(folder: str | os.PathLike) -> list[Path]:
    """Normal images for fitting: <folder>/train/good for an MVTec-layout category, else every image below."""
    folder = Path(folder)
    if folder.is_dir() and is_mvtec_category(folder):
        return list_images(folder / "train" / "good")
    return list_images(folder)


@dataclass
class TestSample:
    path: Path
    label: int               # 0 normal, 1 anomalous
    defect: str              # "good" or the defect type folder
    mask_path: Path | None   # None: all-zero mask (or no mask known for an anomalous image)
    mask_index: int | None = None  # frame index when mask_path is a (frames, H, W) .npy stack (ShanghaiTech)


def mvtec_test_set(category: str | os.PathLike) -> list[TestSample]:
    """The test split of an MVTec-layout category: test/<type>/* with ground_truth/<type>/<stem>_mask.*."""
    category = Path(category)
    test_dir = category / "test"
    if not test_dir.is_dir():
        raise DataError(f"{category}: no test/ folder (expected the MVTec AD layout <category>/test/<type>/)")
    samples = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        gt_dir = category / "ground_truth" / defect_dir.name
        for path in list_images(defect_dir, recursive=False):
            mask = None
            if defect_dir.name != "good":
                candidates = [gt_dir / f"{path.stem}_mask{ext}" for ext in IMAGE_EXTENSIONS]
                candidates += [gt_dir / f"{path.stem}{ext}" for ext in IMAGE_EXTENSIONS]
                mask = next((c for c in candidates if c.is_file()), None)
            samples.append(TestSample(path, int(defect_dir.name != "good"), defect_dir.name, mask))
    if not samples:
        raise DataError(f"{test_dir}: empty test set")
    return samples


def source_paths(source) -> list[Path] | None:
    """The image files a fit source names (a folder, an MVTec category, a file, a list of paths), else None."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: folder not found")
        return training_paths(path) if path.is_dir() else [path]
    if isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
        return [Path(p) for p in source]
    return None


def normal_image_sizes(source) -> list[tuple[int, int]]:
    """(H, W) of every normal image of a fit source (image_size="auto"): from file headers for files, from
    shapes for arrays and tensors (nothing is decoded or copied twice); a DataLoader's first batch."""
    from .data import image_size_of

    if isinstance(source, torch.utils.data.DataLoader):  # its first batch (a batch shares one size)
        batch = next(iter(source), None)
        if batch is None:
            raise DataError("fit: the DataLoader yielded no batches")
        source = batch[0] if isinstance(batch, (tuple, list)) else batch
    paths = source_paths(source)
    if paths is not None:
        return [image_size_of(p) for p in paths]
    if isinstance(source, torch.Tensor) and source.dim() in (3, 4):
        return [tuple(source.shape[-2:])] * (1 if source.dim() == 3 else len(source))
    # one array or PIL image is one image (as to_image_list reads it); fit turns a generator into a list first
    items = [source] if isinstance(source, np.ndarray) or not isinstance(source, (list, tuple)) else source
    return [_in_memory_size(item, i) for i, item in enumerate(items)]


def _in_memory_size(item, index: int) -> tuple[int, int]:
    """(H, W) of one in-memory image as to_image_list reads it (a PIL image is converted: EXIF orientation)."""
    from .data import to_image_list

    if isinstance(item, np.ndarray) and item.ndim in (2, 3):
        return tuple(item.shape[:2])
    if isinstance(item, torch.Tensor) and item.dim() == 3:
        return tuple(item.shape[-2:])
    return tuple(to_image_list([item], "fit images", first=index, keep_u8=True)[0][0].shape[-2:])


def normal_images_u8(source, size: int, progress: bool = False, resize: str = "squash") -> torch.Tensor:
    """Normal images for fit(): a folder, an MVTec category folder (train/good), a file, a list of paths, a
    tensor/array batch or a DataLoader -> uint8 (N, 3, S, S) at the network's size, by the resize policy."""
    S = size
    if isinstance(source, torch.utils.data.DataLoader):
        chunks = []
        for batch in source:
            batch = batch[0] if isinstance(batch, (tuple, list)) else batch
            chunks.append(to_u8_batch(batch, S, "DataLoader batch", resize=resize)[0])
        if not chunks:
            raise DataError("fit: the DataLoader yielded no batches")
        return torch.cat(chunks)
    paths = source_paths(source)
    if paths is not None:
        return load_resized(paths, S, progress, resize)
    return to_u8_batch(source, S, "fit images", resize=resize)[0]


@dataclass
class Category:
    name: str
    kind: str                       # "mvtec" | "folders" | "stc"
    root: Path
    train: list[Path]
    test: list[TestSample]
    notes: list[str] = field(default_factory=list)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


MVTEC_LAYOUT = ("the MVTec AD layout <category>/train/good, <category>/test/<type>, "
                "<category>/ground_truth/<type>/<stem>_mask.*")


def _is_category(folder: Path) -> bool:
    return is_mvtec_category(folder) or (folder / "test").is_dir()


def mvtec_category(folder: str | os.PathLike) -> Category:
    """A category folder; its train list is empty when it has no train/good (then it can only be evaluated with
    a fitted checkpoint: see require_train)."""
    folder = Path(folder)
    if not _is_category(folder):
        raise DataError(f"{folder}: neither train/good nor test/ here (expected {MVTEC_LAYOUT})")
    train = list_images(folder / "train" / "good") if is_mvtec_category(folder) else []
    return Category(folder.name, "mvtec", folder, train, mvtec_test_set(folder))


def require_train(category: Category) -> list[Path]:
    """The training images, or a DataError naming the folder that should hold them."""
    if not category.train:
        where = category.root / "train" / "good" if category.kind == "mvtec" else category.root
        raise DataError(f"{where}: no normal training images to fit on (expected {MVTEC_LAYOUT}; or pass a "
                        "fitted checkpoint with -c)")
    return category.train


def mvtec_categories(root: str | os.PathLike, category: str | None = None) -> list[Category]:
    """One category folder, or every category folder directly under `root` (folders starting with _ or . are
    skipped); `category` picks one by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if _is_category(root):
        if category and category != root.name:
            raise DataError(f"{root} is the category {root.name!r}, not {category!r}")
        return [mvtec_category(root)]
    found = [d for d in _visible_dirs(root) if _is_category(d)]
    if not found:
        raise DataError(f"{root}: no MVTec-layout category here (a category folder holds train/good, test/<type> "
                        "and ground_truth/<type>; a root holds category folders)")
    if category:
        found = [d for d in found if d.name == category]
        if not found:
            raise DataError(f"{root}: no category named {category!r}")
    return [mvtec_category(d) for d in found]


def _mask_by_stem(masks_dir: Path | None, stem: str) -> Path | None:
    if masks_dir is None:
        return None
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_EXTENSIONS:
            if (masks_dir / f"{name}{ext}").is_file():
                return masks_dir / f"{name}{ext}"
    return None


def folders_dataset(good: str | os.PathLike, defect: str | os.PathLike, masks: str | os.PathLike | None = None,
                    train: str | os.PathLike | None = None, seed: int = 0, name: str | None = None) -> Category:
    """Good + defect folders. Without `train`, a seeded 20% of the good images are the normal test images and the
    rest train (stated in the report notes)."""
    good, defect = Path(good), Path(defect)
    masks_dir = Path(masks) if masks else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise DataError(f"{masks_dir}: masks folder not found")
    good_imgs = list_images(good)
    notes = []
    if train:
        train_imgs, test_good = list_images(train), good_imgs
    else:
        shuffled = good_imgs[:]
        random.Random(seed).shuffle(shuffled)
        n_test = max(1, round(0.2 * len(shuffled)))
        if len(shuffled) - n_test < 2:
            raise DataError(f"{good}: needs at least 3 good images to split into training and test")
        test_good, train_imgs = sorted(shuffled[:n_test]), sorted(shuffled[n_test:])
        notes.append(f"no training folder given: {len(train_imgs)} of the {len(good_imgs)} good images train, "
                     f"{len(test_good)} are normal test images (seed {seed})")
    test = [TestSample(p, 0, "good", None) for p in test_good]
    test += [TestSample(p, 1, "defect", _mask_by_stem(masks_dir, p.stem)) for p in list_images(defect)]
    return Category(name or defect.parent.name or "folders", "folders", defect.parent, train_imgs, test, notes)


def read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle: a .npy from elsewhere is data
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def is_stc(root: Path) -> bool:
    return (root / "training" / "frames").is_dir() and (root / "testing" / "frames").is_dir()


def stc_dataset(root: str | os.PathLike) -> Category:
    """ShanghaiTech Campus: train on every training frame; test frames labelled by test_frame_mask/<video>.npy,
    pixel masks from test_pixel_mask/<video>.npy when present."""
    root = Path(root)
    if not is_stc(root):
        raise DataError(f"{root}: not the ShanghaiTech Campus layout (training/frames/<video>/, "
                        "testing/frames/<video>/, test_frame_mask/<video>.npy, test_pixel_mask/<video>.npy)")
    train = list_images(root / "training" / "frames")
    test, notes = [], []
    for video in _visible_dirs(root / "testing" / "frames"):
        frames = list_images(video, recursive=False)
        label_file = root / "test_frame_mask" / f"{video.name}.npy"
        if not label_file.is_file():
            raise DataError(f"{label_file}: frame labels missing for test video {video}")
        labels = read_npy(label_file).reshape(-1)
        if len(labels) != len(frames):
            raise DataError(f"{label_file}: {len(labels)} frame labels but {video} has {len(frames)} frames")
        pixel_file = root / "test_pixel_mask" / f"{video.name}.npy"
        if pixel_file.is_file():
            n = read_npy(pixel_file).shape[0]
            if n != len(frames):
                raise DataError(f"{pixel_file}: {n} frame masks but {video} has {len(frames)} frames")
        else:
            notes.append(f"{pixel_file}: missing, frames of {video.name} count as all-normal pixels")
            pixel_file = None
        for i, (frame, lab) in enumerate(zip(frames, labels)):
            test.append(TestSample(frame, int(lab != 0), "anomalous" if lab else "good", pixel_file,
                                   mask_index=i if pixel_file else None))
    if not test:
        raise DataError(f"{root / 'testing' / 'frames'}: no test videos")
    return Category("shanghaitech", "stc", root, train, test, notes)


def discover(data: str | os.PathLike, category: str | None = None, layout: str = "auto") -> list[Category]:
    """The categories to evaluate under `data`: an MVTec category or root, or an STC root."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: not found")
    if layout == "stc" or (layout == "auto" and data.is_dir() and is_stc(data)):
        return [stc_dataset(data)]
    if layout == "folders":
        raise ValueError("the plain-folders layout takes --good and --defect folders (folders_dataset)")
    return mvtec_categories(data, category)


DEV_FRACTION, DEV_SEED = 0.3, 0


def dev_final_split(category: Category, fraction: float = DEV_FRACTION, seed: int = DEV_SEED
                    ) -> tuple[Category, Category]:
    """(development, final) copies of a category whose test sets split its test images: a seeded share of each
    test folder (good and every defect type) for choosing settings, the rest reported once. Training images are
    shared (they are normal images either way)."""
    import dataclasses

    import numpy as np

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    dev, final = [], []
    for defect in sorted({s.defect for s in category.test}):
        group = sorted((s for s in category.test if s.defect == defect), key=lambda s: str(s.path))
        picked = set(rng.permutation(len(group))[:max(1, round(fraction * len(group)))].tolist())
        dev += [s for i, s in enumerate(group) if i in picked]
        final += [s for i, s in enumerate(group) if i not in picked]
    return (dataclasses.replace(category, name=f"{category.name}-dev", test=dev),
            dataclasses.replace(category, name=f"{category.name}-final", test=final))
