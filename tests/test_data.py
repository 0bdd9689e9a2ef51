"""Image decoding and folders: every bad input gets a clear error naming the file, or correct handling."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastmsfd.data import list_images, read_image, to_image_list
from fastmsfd.datasets import mvtec_test_set, training_paths
from fastmsfd.errors import DataError, ImageDecodeError


def _png(path, arr, **kw):
    Image.fromarray(arr).save(path, **kw)
    return path


def test_reads_common_modes(tmp_path, rng):
    rgb = rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)
    gray = rgb[..., 0].copy()
    assert (read_image(_png(tmp_path / "a.png", rgb)) == rgb).all()
    g = read_image(_png(tmp_path / "g.png", gray))
    assert g.shape == (9, 7, 3) and (g[..., 1] == gray).all()
    rgba = np.concatenate([rgb, np.full((9, 7, 1), 128, np.uint8)], 2)
    assert (read_image(_png(tmp_path / "r.png", rgba)) == rgb).all()
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (9, 7, 3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (9, 7, 3)
    assert read_image(_png(tmp_path / "one.png", rgb[:1, :1])).shape == (1, 1, 3)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")[..., 0]
    np.testing.assert_array_equal(out, np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[:, :4] = 255  # left half white
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (8, 4, 3)
    assert out[:4].mean() > 200 and out[4:].mean() < 50  # the white half is now on top


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("hello, not an image"), "not an image"),
    (lambda p: p.write_bytes(_valid_png_bytes()[:60]), "truncated or corrupt"),
])
def test_bad_files_raise_naming_the_file(tmp_path, make, match):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageDecodeError, match=match) as err:
        read_image(path)
    assert str(path) in str(err.value)


def _valid_png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    """A PNG whose header claims 100000 x 100000 pixels: refused from the header alone."""
    data = bytearray(_valid_png_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match="bomb"):
        read_image(tmp_path / "bomb.png")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_images(tmp_path / "empty")


def test_symlink_loop_does_not_hang(tmp_path):
    (tmp_path / "d").mkdir()
    _png(tmp_path / "d" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    assert list_images(tmp_path / "d") == [tmp_path / "d" / "a.png"]


def test_mvtec_layout(tmp_path):
    cat = tmp_path / "cat"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack", "test/_skip"):
        (cat / sub).mkdir(parents=True)
    img = np.zeros((8, 8, 3), np.uint8)
    for p in ("train/good/0.png", "test/good/1.jpg", "test/crack/2.png", "test/crack/3.bmp", "test/_skip/x.png"):
        _png(cat / p, img)
    _png(cat / "ground_truth/crack/2_mask.png", np.full((8, 8), 255, np.uint8))
    assert training_paths(cat) == [cat / "train/good/0.png"]
    samples = mvtec_test_set(cat)
    assert [(s.path.name, s.label, s.mask_path is not None) for s in samples] == [
        ("2.png", 1, True), ("3.bmp", 1, False), ("1.jpg", 0, False)]


@pytest.mark.parametrize("bad,match", [
    (torch.full((1, 3, 4, 4), float("nan")), "NaN"),
    (torch.full((3, 4, 4), 255.0), r"\[0, 1\]"),
    (torch.zeros(1, 2, 4, 4), "channels"),
    (torch.zeros(0, 3, 4, 4), "empty"),
    (torch.zeros(3, 4, 4, dtype=torch.int32), "dtype|uint8"),
    (np.zeros((4, 4, 5), np.uint8), "array"),
    ([], "empty"),
    ([object()], "unsupported"),
])
def test_bad_in_memory_images(bad, match):
    with pytest.raises(ValueError, match=match):
        to_image_list(bad)


def test_in_memory_conversions(rng):
    arr = rng.integers(0, 255, (5, 6, 3), dtype=np.uint8)
    ims, _ = to_image_list([arr, Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1),
                            torch.from_numpy(arr).permute(2, 0, 1).float() / 255, arr[..., 0]])
    for t in ims[:4]:
        torch.testing.assert_close(t, ims[0])
    assert ims[4].shape == (3, 5, 6)
    strided = torch.rand(2, 3, 10, 12)[:, :, ::2, ::3]  # non-contiguous
    assert to_image_list(strided)[0][0].shape == (3, 5, 4)


def test_inf_and_non_contiguous_tensors():
    with pytest.raises(ValueError, match="NaN|inf"):
        to_image_list(torch.full((1, 3, 4, 4), float("inf")))
    x = torch.rand(2, 3, 6, 5)
    strided = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, not contiguous
    assert not strided.is_contiguous()
    got, _ = to_image_list(strided)
    assert all(torch.equal(a, b) for a, b in zip(got, x))  # handled, not refused
