"""A tiny fake CelebA in torchvision's layout, for tests that can't download 1.4 GB of faces.

The faces are drawn shapes whose visible features follow the attributes (dark rings for
Eyeglasses, an upturned mouth for Smiling, a dark chin for a beard, no hair band for Bald, grey hair
when old), and the attributes are drawn with the dependencies of the complex CelebA graph: men
grow beards and go bald, baldness comes with age.

Example:
    >>> data_dir = write_fake_celeba(tmp_path, n=40)
    >>> CelebADataModule(data_dir=str(data_dir)).setup()
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ATTRIBUTE_NAMES", "fake_attributes", "write_fake_celeba"]

#: CelebA's 40 attribute columns, in the order of list_attr_celeba.txt.
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

WIDTH, HEIGHT = 178, 218  # CelebA's aligned faces


def fake_attributes(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Attribute name -> ``(n,)`` int values -1/1, with the complex graph's dependencies.

    P(beard) is 0.05 for women and 0.35 (young) / 0.55 (old) for men; P(Bald) is 0.01 for women
    and 0.05 (young) / 0.45 (old) for men. The other attributes are independent coin flips.
    """
    rng = np.random.default_rng(seed)
    young = rng.random(n) < 0.7
    male = rng.random(n) < 0.5
    p_beard = np.where(male, np.where(young, 0.35, 0.55), 0.05)
    p_bald = np.where(male, np.where(young, 0.05, 0.45), 0.01)
    drawn = {
        "Young": young,
        "Male": male,
        "No_Beard": rng.random(n) >= p_beard,
        "Bald": rng.random(n) < p_bald,
        "Smiling": rng.random(n) < 0.5,
        "Eyeglasses": rng.random(n) < 0.3,
    }
    others = rng.random((len(ATTRIBUTE_NAMES), n)) < 0.3
    return {
        name: np.where(drawn.get(name, others[i]), 1, -1) for i, name in enumerate(ATTRIBUTE_NAMES)
    }


def draw_face(attributes: dict[str, int], rng: np.random.Generator) -> Image.Image:
    """A 178 x 218 RGB cartoon face showing Eyeglasses, Smiling, No_Beard, Bald and Young."""
    background = tuple(int(v) for v in rng.integers(120, 230, size=3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    skin = tuple(int(v) for v in np.array([224, 180, 150]) + rng.integers(-20, 20, size=3))
    cx, cy = WIDTH // 2 + int(rng.integers(-4, 5)), 115 + int(rng.integers(-4, 5))
    draw.ellipse((cx - 45, cy - 60, cx + 45, cy + 60), fill=skin)
    if attributes["Bald"] != 1:  # a hair band over the top of the head
        hair = (60, 40, 25) if attributes["Young"] == 1 else (170, 170, 170)
        draw.chord((cx - 47, cy - 64, cx + 47, cy - 5), 180, 360, fill=hair)
    if attributes["No_Beard"] != 1:  # a dark lower face
        draw.chord((cx - 45, cy - 20, cx + 45, cy + 60), 20, 160, fill=(50, 35, 25))
    for ex in (cx - 19, cx + 19):
        draw.ellipse((ex - 5, cy - 15, ex + 5, cy - 5), fill=(30, 30, 30))
        if attributes["Eyeglasses"] == 1:
            draw.ellipse((ex - 14, cy - 24, ex + 14, cy + 4), outline=(10, 10, 10), width=4)
    mouth = (cx - 20, cy + 15, cx + 20, cy + 40)
    if attributes["Smiling"] == 1:  # the lower half of an ellipse: corners up
        draw.arc(mouth, 20, 160, fill=(150, 30, 40), width=4)
    else:
        draw.line((cx - 16, cy + 30, cx + 16, cy + 30), fill=(150, 30, 40), width=4)
    return image


def write_fake_celeba(root: Path, n: int = 40, seed: int = 0) -> Path:
    """Write ``n`` fake faces and their annotations under ``root/celeba/``; return ``root``.

    The layout is torchvision's: ``img_align_celeba/000001.jpg ...``, ``list_attr_celeba.txt``
    (a count, the 40 names, then ``000001.jpg  -1  1 ...``) and ``list_eval_partition.txt``
    (contiguous train, val, test blocks of about 70/15/15%, each of at least 2 images, as in the
    real file).
    """
    if n < 6:
        raise ValueError(f"a fake CelebA needs at least 6 images (2 per split), got {n}")
    root = Path(root)
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    attributes = fake_attributes(n, seed)
    rng = np.random.default_rng(seed + 1)
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    lines = [str(n), " ".join(ATTRIBUTE_NAMES) + " "]
    for i, file in enumerate(files):
        row = {name: int(values[i]) for name, values in attributes.items()}
        draw_face(row, rng).save(images / file, quality=90)
        # the real file right-aligns the values in 2 characters, so fields are split by 1-2 spaces
        lines.append(file + " " + " ".join(f"{row[name]:2d}" for name in ATTRIBUTE_NAMES))
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    n_val = n_test = max(2, round(0.15 * n))
    codes = [0] * (n - n_val - n_test) + [1] * n_val + [2] * n_test
    partition = "".join(f"{file} {code}\n" for file, code in zip(files, codes))
    (folder / "list_eval_partition.txt").write_text(partition)
    return root
