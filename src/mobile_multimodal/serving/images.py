"""Turn an untrusted image string (base64 or data URI) into a small, safe RGB ``PIL.Image``.

Every way this can go wrong is a :class:`ServiceError` with its own code, raised *before* the
expensive step it guards:

* the data URI is parsed by hand (``data:image/png;base64,...``); only base64 URIs are accepted;
* base64 is decoded strictly (standard or URL-safe alphabet, padding optional, whitespace ignored);
* the format is sniffed from the magic bytes and must be in :data:`ALLOWED_FORMATS`, and Pillow is
  told to use only that decoder (no surprise formats such as EPS that shell out);
* width and height are read from the header and checked against the limits *before* any pixel is
  decompressed, which is what stops decompression bombs (a 50 KB PNG that inflates to 10 GB);
* Pillow's own bomb warning is raised as an error too, as a second line of defence;
* the EXIF orientation is applied, so a phone photo taken upright reaches the model upright.

Decoding is split at the header (:func:`read_header`, then :func:`decode_pixels`) so a route can
choose where the pixels are decompressed: :func:`decode_image_async` does small images inline and
hands anything over :data:`INLINE_DECODE_PIXELS` pixels (or :data:`INLINE_DECODE_CHARS` of
base64) to a worker thread. What a decode costs follows its pixels, not its bytes: a 4096x4096
PNG of one colour is a few KB of base64 and ~50 MB of pixels.

Example::

    img = decode_image("data:image/png;base64,iVBORw0...", ImageLimits())
    img = await decode_image_async(value, ImageLimits())   # off the event loop when large
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from PIL import Image, ImageOps, UnidentifiedImageError

from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError

# Pillow format name -> the MIME types a data URI may announce for it.
ALLOWED_FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png",),
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "WEBP": ("image/webp",),
    "BMP": ("image/bmp", "image/x-ms-bmp"),
    "GIF": ("image/gif",),
}
_ALLOWED_MIME = {mime for mimes in ALLOWED_FORMATS.values() for mime in mimes}

# Formats we recognise only to name them in the refusal.
_KNOWN_OTHER = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"%PDF": "PDF",
    b"<svg": "SVG",
    b"<?xm": "SVG/XML",
    b"\x00\x00\x01\x00": "ICO",
    b"%!PS": "PostScript",
}


# Decoded inline (on the event loop) only at or under both: a 256x256 image decodes in well under
# a millisecond, and our inputs (64x64 scenes, 32x256 text lines) are far smaller.
INLINE_DECODE_PIXELS = 256 * 256
INLINE_DECODE_CHARS = 256 * 1024  # base64 characters: decoding the base64 itself costs too

# Large decodes at once, per event loop. Each is CPU-bound C code outside the GIL: a dozen at once
# on two cores starved the event loop of CPU (/alive stalled for seconds, where with one decode
# thread it stayed under a tenth of that). One core stays the loop's.
DECODE_THREADS = max(1, (os.cpu_count() or 1) - 1)
_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageLimits:
    """What an accepted image may be. Defaults match the settings' defaults."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 4096
    min_side: int = 8


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name for ``data``'s magic bytes, if it is an allowed format."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


def _unsupported(data: bytes) -> ServiceError:
    allowed = ", ".join(ALLOWED_FORMATS)
    for magic, name in _KNOWN_OTHER.items():
        if data.lstrip()[:4] == magic:
            return ServiceError(
                ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
                f"image format {name} is not accepted; use one of {allowed}",
            )
    return ServiceError(
        ErrorCode.UNSUPPORTED_IMAGE_FORMAT, f"the bytes are not a recognised image; use one of {allowed}"
    )


def split_data_uri(value: str) -> tuple[str | None, str]:
    """Return ``(mime type or None, base64 payload)``; plain base64 gives ``(None, value)``."""
    if value[:5].lower() != "data:":
        return None, value
    header, sep, payload = value.partition(",")
    if not sep:
        raise ServiceError(ErrorCode.INVALID_DATA_URI, "a data URI needs a ',' between header and data")
    params = header[5:].split(";")
    mime = params[0].strip().lower()
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ServiceError(
            ErrorCode.INVALID_DATA_URI, "only base64 data URIs are accepted (data:image/png;base64,...)"
        )
    if mime and mime not in _ALLOWED_MIME:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            f"media type '{mime}' is not accepted; use one of {', '.join(sorted(_ALLOWED_MIME))}",
        )
    return mime or None, payload


def decode_base64(payload: str, max_bytes: int) -> bytes:
    """Strict base64: either alphabet, optional padding, whitespace ignored, size checked first."""
    compact = "".join(payload.split())
    if not compact:
        raise ServiceError(ErrorCode.INVALID_BASE64, "the image data is empty")
    if len(compact) // 4 * 3 > max_bytes:
        raise ServiceError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"the image is larger than {max_bytes} bytes", status=413
        )
    compact = compact.replace("-", "+").replace("_", "/")
    remainder = len(compact) % 4
    if remainder == 1:
        raise ServiceError(ErrorCode.INVALID_BASE64, "the image is not valid base64 (bad length)")
    if remainder:
        compact += "=" * (4 - remainder)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ServiceError(ErrorCode.INVALID_BASE64, f"the image is not valid base64: {exc}") from exc


@dataclass(frozen=True)
class ImageHeader:
    """An image whose header was read and checked; its pixels are not decompressed yet."""

    image: Image.Image  # lazily opened: size and mode known, pixels not loaded
    fmt: str

    @property
    def pixels(self) -> int:
        width, height = self.image.size
        return width * height


@contextmanager
def _pillow_errors(fmt: str) -> Iterator[None]:
    """Pillow's failures -> our codes, for both the header and the pixel phase."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        message = f"image refused as a decompression bomb: {exc}"
        raise ServiceError(ErrorCode.IMAGE_TOO_LARGE, message) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        message = f"the {fmt} image could not be decoded: {exc}"
        raise ServiceError(ErrorCode.IMAGE_DECODE_FAILED, message) from exc


def read_header(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Sniff the format and read the header; refuse bad dimensions before any pixel is decoded."""
    fmt = sniff_format(data)
    if fmt is None:
        raise _unsupported(data)
    with _pillow_errors(fmt):
        img = Image.open(io.BytesIO(data), formats=[fmt])  # reads the header only
        width, height = img.size
        if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image is {width}x{height}; the limit is {limits.max_side} px a side and "
                f"{limits.max_pixels} pixels",
            )
        if width < limits.min_side or height < limits.min_side:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_SMALL,
                f"image is {width}x{height}; it must be at least {limits.min_side} px a side",
            )
    return ImageHeader(img, fmt)


def decode_pixels(header: ImageHeader) -> Image.Image:
    """Decompress the (first frame's) pixels, turn the image upright per EXIF, convert to RGB."""
    img = header.image
    with _pillow_errors(header.fmt):
        img.seek(0)  # animated formats: the first frame only
        img.load()
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
    return _to_rgb(img)


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Decode bytes of an allowed format into RGB, checking dimensions before decompressing."""
    return decode_pixels(read_header(data, limits))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent pixels over white (the training images have white backgrounds)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(value: str, limits: ImageLimits) -> Image.Image:
    """Parse a base64 string or data URI into a validated RGB image (see the module doc)."""
    _, payload = split_data_uri(value.strip())
    data = decode_base64(payload, limits.max_bytes)
    return open_image(data, limits)


def _decode_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _LIMITERS.get(loop)
    if limiter is None:
        limiter = _LIMITERS[loop] = anyio.CapacityLimiter(DECODE_THREADS)
    return limiter


async def decode_image_async(value: str, limits: ImageLimits) -> Image.Image:
    """:func:`decode_image` without blocking the event loop on a large image: the header is read
    inline (cheap), the pixels are decoded inline only up to :data:`INLINE_DECODE_PIXELS`, larger
    ones in a worker thread (at most :data:`DECODE_THREADS` at once)."""
    if len(value) > INLINE_DECODE_CHARS:
        return await anyio.to_thread.run_sync(decode_image, value, limits, limiter=_decode_limiter())
    _, payload = split_data_uri(value.strip())
    header = read_header(decode_base64(payload, limits.max_bytes), limits)
    if header.pixels <= INLINE_DECODE_PIXELS:
        return decode_pixels(header)
    return await anyio.to_thread.run_sync(decode_pixels, header, limiter=_decode_limiter())


def encode_data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    """The inverse, for clients and tests: ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    mime = ALLOWED_FORMATS[fmt.upper()][0]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
