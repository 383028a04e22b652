"""SynDigits-style images: digits rendered from fonts under random style, pose, colour, blur and noise.

Like Ganin & Lempitsky's SynDigits (ICML 2015), an image shows a centred digit (the label), sometimes with
neighbouring digits cut by the frame as in house numbers, drawn in a font, size, stroke, colour on a
coloured gradient, rotation and offset chosen at random, then blurred and noised. The fonts are the ones
that ship with matplotlib and Pillow, so nothing is downloaded; with the same package versions the images
are the same bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

OUTPUT_SIZE = 28
# Glyphs are drawn at twice the output size and box-filtered down, which antialiases thin strokes.
SUPERSAMPLE = 2
CANVAS = OUTPUT_SIZE * SUPERSAMPLE

# matplotlib's TTFs whose digits are ordinary lining digits (cmmi10 has old-style digits, the STIX "NonUni"
# and "Siz" faces and the "Display" faces have no digits at all, LastResort draws placeholder boxes).
MATPLOTLIB_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)
PILLOW_DEFAULT_FONT = "<pillow-default>"  # Pillow's built-in scalable font (Aileron)


@dataclass(frozen=True)
class SynStyle:
    """Ranges the random style is drawn from; fractions are of the image side."""

    digit_height: tuple[float, float] = (0.45, 0.75)
    max_offset: float = 0.08
    max_rotation_deg: float = 15.0
    max_stroke_px: int = 1  # extra outline width, in canvas pixels
    neighbour_probability: float = 0.4  # per side: a cut-off digit left and/or right of the label
    background_spread: float = 40.0  # std of the gradient's second colour around the first, 0..255
    min_contrast: float = 80.0  # luma difference between digit and background, 0..255
    max_blur_px: float = 1.2  # Gaussian blur radius at canvas resolution
    max_noise_std: float = 10.0  # pixel noise, 0..255


def _load_font(source: str, size: int) -> ImageFont.FreeTypeFont:
    if source == PILLOW_DEFAULT_FONT:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):  # a Pillow built without FreeType
            raise OSError("Pillow's default font is not scalable here")
        return font
    return ImageFont.truetype(source, size)


@functools.lru_cache(maxsize=4096)
def _font(source: str, size: int) -> ImageFont.FreeTypeFont:
    return _load_font(source, size)


def _renders_ten_digits(source: str) -> bool:
    """Guard against a font that changed under us: ten distinct, non-empty digit glyphs."""
    try:
        font = _load_font(source, 32)
    except OSError:
        return False
    glyphs = set()
    for digit in "0123456789":
        image = Image.new("L", (64, 64))
        ImageDraw.Draw(image).text((8, 8), digit, font=font, fill=255)
        if image.getbbox() is None:
            return False
        glyphs.add(image.tobytes())
    return len(glyphs) == 10


@functools.lru_cache(maxsize=1)
def font_sources() -> tuple[str, ...]:
    """The fonts SynDigits draws from, in a fixed order: matplotlib's TTFs that exist here, then Pillow's."""
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    candidates = [str(font_dir / name) for name in MATPLOTLIB_FONTS] + [PILLOW_DEFAULT_FONT]
    usable = tuple(source for source in candidates if _renders_ten_digits(source))
    if not usable:
        raise RuntimeError("no font that renders digits was found in matplotlib or Pillow")
    return usable


@functools.lru_cache(maxsize=64)
def _digit_height_per_point(source: str) -> float:
    # Fonts differ in how tall a digit is at a given point size; measuring one lets every font be drawn at
    # the same digit height.
    _, top, _, bottom = _font(source, 100).getbbox("8")
    return (bottom - top) / 100.0


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _background(rng: np.random.Generator, style: SynStyle) -> np.ndarray:
    """A linear gradient between two nearby random colours, (CANVAS, CANVAS, 3) float."""
    start = rng.uniform(0, 255, 3)
    end = np.clip(start + rng.normal(0, style.background_spread, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    grid = np.linspace(-0.5, 0.5, CANVAS)
    along = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]
    weight = (along - along.min()) / (along.max() - along.min())
    return start + weight[..., None] * (end - start)


def _foreground(rng: np.random.Generator, background: np.ndarray, style: SynStyle) -> np.ndarray:
    mean_luma = _luma(background.reshape(-1, 3).mean(axis=0))
    for _ in range(32):
        colour = rng.uniform(0, 255, 3)
        if abs(_luma(colour) - mean_luma) >= style.min_contrast:
            return colour
    # Backgrounds of middling luma rarely admit a random colour with enough contrast.
    return np.full(3, 0.0 if mean_luma > 127.5 else 255.0)


def _digit_mask(rng: np.random.Generator, label: int, style: SynStyle) -> Image.Image:
    """Coverage of the glyphs, 'L' mode (CANVAS, CANVAS): the label centred (plus jitter), neighbours cut."""
    sources = font_sources()
    source = sources[rng.integers(len(sources))]
    height = rng.uniform(*style.digit_height) * CANVAS
    font = _font(source, max(4, round(height / _digit_height_per_point(source))))
    left = str(rng.integers(10)) if rng.random() < style.neighbour_probability else ""
    right = str(rng.integers(10)) if rng.random() < style.neighbour_probability else ""
    label_text = str(label)

    g_left, g_top, g_right, g_bottom = font.getbbox(label_text)
    centre_x = CANVAS / 2 + rng.uniform(-style.max_offset, style.max_offset) * CANVAS
    centre_y = CANVAS / 2 + rng.uniform(-style.max_offset, style.max_offset) * CANVAS
    origin_x = centre_x - font.getlength(left) - (g_left + g_right) / 2
    origin_y = centre_y - (g_top + g_bottom) / 2

    mask = Image.new("L", (CANVAS, CANVAS))
    stroke = int(rng.integers(style.max_stroke_px + 1))
    ImageDraw.Draw(mask).text(
        (origin_x, origin_y),
        left + label_text + right,
        font=font,
        fill=255,
        stroke_width=stroke,
        stroke_fill=255,
    )
    angle = rng.uniform(-style.max_rotation_deg, style.max_rotation_deg)
    mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR, center=(centre_x, centre_y))
    return mask.filter(ImageFilter.GaussianBlur(rng.uniform(0, style.max_blur_px)))


def render_syn_digit(label: int, rng: np.random.Generator, style: SynStyle = SynStyle()) -> np.ndarray:
    """One image of ``label``, uint8 (OUTPUT_SIZE, OUTPUT_SIZE, 3)."""
    background = _background(rng, style)
    foreground = _foreground(rng, background, style)
    coverage = np.asarray(_digit_mask(rng, label, style), dtype=np.float64)[..., None] / 255.0
    canvas = background * (1.0 - coverage) + foreground * coverage
    image = canvas.reshape(OUTPUT_SIZE, SUPERSAMPLE, OUTPUT_SIZE, SUPERSAMPLE, 3).mean(axis=(1, 3))
    image += rng.normal(0.0, rng.uniform(0, style.max_noise_std), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_syn_digits(labels: np.ndarray, seed: int) -> np.ndarray:
    """Images for ``labels``, uint8 (N, 28, 28, 3). Image i depends only on (seed, i, labels[i])."""
    images = np.empty((len(labels), OUTPUT_SIZE, OUTPUT_SIZE, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index] = render_syn_digit(int(label), np.random.default_rng([seed, index]))
    return images
