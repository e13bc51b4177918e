"""xai.io.load_image: every supported input becomes RGB; every bad input raises one clear ImageInputError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xai.io import ImageInputError, load_image


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    return Image.fromarray(np.stack([x, x[:, ::-1], np.full_like(x, 90)], axis=-1))


# ---- bad input -------------------------------------------------------------------------------
def test_not_an_image():
    with pytest.raises(ImageInputError, match="not an image"):
        load_image(b"%PDF-1.4 this is a text file, not a picture")


def test_zero_byte_bytes_and_file(tmp_path):
    with pytest.raises(ImageInputError, match="empty"):
        load_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageInputError, match="empty.png is empty"):
        load_image(empty)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt):
    data = encode(gradient(256, 256), fmt)
    with pytest.raises(ImageInputError, match="truncated|corrupt"):
        load_image(data[: len(data) // 2])


def test_corrupt_payload():
    data = bytearray(encode(gradient(128, 128)))
    data[60:400] = b"\x00" * 340  # header intact, compressed data destroyed
    with pytest.raises(ImageInputError, match="corrupt|truncated"):
        load_image(bytes(data))


def test_one_pixel_image_is_refused_with_the_minimum_size():
    with pytest.raises(ImageInputError, match=r"too small \(1 x 1\).*at least 8"):
        load_image(encode(Image.new("RGB", (1, 1), "red")))


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (9000, 6000)))  # 54 megapixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageInputError, match="too large.*54 megapixels"):
        load_image(bomb)
    with pytest.raises(ImageInputError, match="too large"):
        load_image(encode(gradient(200, 200)), max_pixels=10_000)


def test_missing_path_and_unsupported_type(tmp_path):
    with pytest.raises(ImageInputError, match="No image file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageInputError, match="Cannot read an image from a int"):
        load_image(42)


@pytest.mark.parametrize("array, message", [
    (np.zeros((32, 32, 2), np.uint8), "H x W"),
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.full((32, 32), 3.0, np.float32), "between 0 and 1"),
    (np.full((32, 32), -4, np.int16), "negative"),
])
def test_bad_arrays(array, message):
    with pytest.raises(ImageInputError, match=message):
        load_image(array)


# ---- conversions -----------------------------------------------------------------------------
def test_16_bit_grayscale_is_scaled_to_8_bits():
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    image = load_image(encode(Image.fromarray(values)))
    out = np.asarray(image)
    assert image.mode == "RGB" and out.shape == (32, 64, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and abs(int(out[0, 32, 0]) - 130) <= 2
    assert (out[..., 0] == out[..., 1]).all()


def test_palette_and_palette_with_transparency():
    pal = gradient().convert("P", palette=Image.ADAPTIVE, colors=16)
    out = load_image(encode(pal))
    assert out.mode == "RGB" and out.size == (64, 48)
    transparent = Image.new("P", (16, 16), 0)
    transparent.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    transparent.putpixel((3, 3), 1)
    transparent.info["transparency"] = 0
    out = np.asarray(load_image(encode(transparent, transparency=0)))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[3, 3]) == (200, 10, 10)


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(encode(cmyk, "JPEG", quality=95)))
    r, g, b = out[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_rgba_is_composited_on_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 255, 255)  # opaque blue
    rgba[:, 8:] = (255, 0, 0, 0)  # fully transparent red
    rgba[0, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    out = np.asarray(load_image(encode(Image.fromarray(rgba))))
    assert tuple(out[5, 2]) == (0, 0, 255)
    assert tuple(out[5, 12]) == (255, 255, 255)
    assert 120 <= out[0, 0, 0] <= 135


def test_grayscale_and_bilevel():
    gray = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (20, 1)))
    out = np.asarray(load_image(encode(gray)))
    assert out.shape == (20, 64, 3) and (out[..., 0] == out[..., 2]).all() and out[0, 10, 1] == 40
    out = np.asarray(load_image(encode(Image.new("1", (16, 16), 1))))
    assert (out == 255).all()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "blue")
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = np.asarray(out)[5, 10], np.asarray(out)[35, 10]
    assert top[0] > 200 and top[2] < 60  # red now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_multi_frame_gif_takes_the_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "lime")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(buf.getvalue()))
    assert out[8, 8, 0] > 200 and out[8, 8, 1] < 60


def test_paths_file_objects_pil_and_arrays(tmp_path):
    src = gradient()
    path = tmp_path / "part.png"
    src.save(path)
    expected = np.asarray(src)
    for source in (path, str(path), io.BytesIO(path.read_bytes()), path.read_bytes(), src, expected):
        out = load_image(source)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), expected)


def test_arrays_of_other_types():
    assert np.asarray(load_image(np.ones((10, 10), np.float32))).min() == 255
    assert np.asarray(load_image(np.full((10, 10), 65535, np.uint16))).min() == 255
    assert np.asarray(load_image(np.zeros((10, 10, 1), bool))).max() == 0
    rgba = np.zeros((10, 10, 4), np.uint8)
    assert np.asarray(load_image(rgba)).min() == 255  # transparent -> white


def test_a_small_file_that_decodes_into_a_huge_picture_is_refused_before_decoding():
    """A 116 kB 16-bit TIFF of 40 megapixels (once 3.3 s and 670 MB of /detect) is refused from its header; a
    smooth 4.2-megapixel JPEG photo-like picture, compressed hard, is still read."""
    flat = io.BytesIO()
    Image.fromarray(np.zeros((5000, 8000), np.uint16)).save(flat, format="TIFF", compression="tiff_deflate")
    with pytest.raises(ImageInputError, match="would expand to 40 megapixels"):
        load_image(flat.getvalue())
    yy, xx = np.mgrid[0:2000, 0:2100]
    smooth = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    photo = io.BytesIO()
    Image.fromarray(smooth).save(photo, format="JPEG", quality=50)
    assert load_image(photo.getvalue()).size == (2100, 2000)
