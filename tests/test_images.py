import numpy as np
import pytest
from PIL import Image

from model.images import ImageReadError, border_box, boxes_after_crop, is_image_file, load_rgb, prepare
from tests.helpers import fake_ultrasound, save_image

BASE = fake_ultrasound(1, (60, 70))


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "CMYK", "1", "I;16"])
def test_every_mode_becomes_8bit_rgb(tmp_path, mode):
    ext = ".jpg" if mode == "CMYK" else ".png"
    if mode == "I;16":
        path = tmp_path / "img.png"
        Image.fromarray((BASE[..., 0].astype(np.uint16) * 257)).save(path)
    else:
        path = save_image(tmp_path / f"img{ext}", BASE, mode)
    rgb = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (60, 70, 3)
    assert rgb.flags.writeable
    if mode in ("L", "I;16", "LA", "RGBA", "RGB"):
        # Grey content survives the conversion: 16-bit keeps its top 8 bits.
        np.testing.assert_allclose(rgb[..., 0].astype(int), BASE[..., 0].astype(int), atol=1)


def test_rgba_transparency_becomes_black(tmp_path):
    rgba = np.dstack([BASE, np.full(BASE.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert load_rgb(path)[:10].max() == 0


@pytest.mark.parametrize("name", ["a.jpg", "b.JPG", "c.jpeg", "d.PNG", "e.bmp", "f.BMP"])
def test_extensions_in_any_case(tmp_path, name):
    assert is_image_file(name)
    save_image(tmp_path / name, BASE)
    assert load_rgb(tmp_path / name).shape == (60, 70, 3)


def test_not_images():
    assert not is_image_file("notes.txt") and not is_image_file("x.gif")


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "0003.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=r"0003\.png: cannot decode this image"):
        load_rgb(path)


def test_truncated_file_names_the_file(tmp_path):
    good = save_image(tmp_path / "full.jpg", fake_ultrasound(2, (200, 200)))
    cut = tmp_path / "0007.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageReadError, match=r"0007\.jpg"):
        load_rgb(cut)


def test_border_crop_finds_the_sector_despite_text_in_the_frame():
    img = fake_ultrasound(3, (100, 120), border=15)
    img[3, 20:30] = 255  # a line of text in the frame: too thin to count as content
    assert border_box(img) == (15, 15, 105, 85)
    assert prepare(img, 32).shape == (32, 32, 3)


def test_border_crop_leaves_dark_images_alone():
    img = np.zeros((50, 60, 3), np.uint8)
    img[20:25, 20:25] = 200
    assert border_box(img) == (0, 0, 60, 50)


def test_boxes_follow_the_crop():
    boxes = boxes_after_crop([(0.5, 0.5, 0.2, 0.2)], crop=(10, 0, 90, 100), shape=(100, 100))
    np.testing.assert_allclose(boxes, [[0.375, 0.4, 0.625, 0.6]], atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 200  # bright left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    turned = load_rgb(tmp_path / "turned.jpg")
    assert turned.shape == (40, 20, 3) and turned[:20].mean() > 150 > turned[20:].mean()  # left half now on top
    plain = load_rgb(tmp_path / "plain.png")
    np.testing.assert_array_equal(plain, pixels)
    assert plain.flags.writeable
