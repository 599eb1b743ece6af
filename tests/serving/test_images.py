"""Image decoding and hardening: every bad input is a ServiceError with its own code."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from mobile_multimodal.serving.error_handlers import ErrorCode, ServiceError
from mobile_multimodal.serving.images import ImageLimits, decode_image, encode_data_uri

from .conftest import png_bytes

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1024 * 1024, max_side=1024, min_side=8)


def _code(value: str, limits: ImageLimits = LIMITS) -> ErrorCode:
    with pytest.raises(ServiceError) as info:
        decode_image(value, limits)
    return info.value.code


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_every_allowed_format_decodes_to_rgb_with_its_pixels(fmt: str) -> None:
    src = Image.new("RGB", (32, 24), (200, 30, 30))
    img = decode_image(encode_data_uri(src, fmt), LIMITS)
    assert img.mode == "RGB" and img.size == (32, 24)
    r, g, b = img.getpixel((16, 12))  # type: ignore[misc]
    assert abs(r - 200) < 12 and g < 45 and b < 45  # lossy formats are close, not exact


def test_plain_urlsafe_unpadded_and_wrapped_base64_are_accepted() -> None:
    raw = png_bytes()
    standard = base64.b64encode(raw).decode()
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    wrapped = "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76))
    for value in (standard, urlsafe, wrapped, "DATA:image/PNG;base64," + standard):
        assert decode_image(value, LIMITS).size == (64, 64)


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img = decode_image(encode_data_uri(rgba), LIMITS)
    assert img.getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", ErrorCode.INVALID_BASE64),
        ("   ", ErrorCode.INVALID_BASE64),
        ("abc!def", ErrorCode.INVALID_BASE64),
        ("abcde", ErrorCode.INVALID_BASE64),  # impossible length
        ("data:image/png,iVBOR", ErrorCode.INVALID_DATA_URI),  # not base64
        ("data:image/png;base64", ErrorCode.INVALID_DATA_URI),  # no comma
        ("data:text/html;base64,PGgxPg==", ErrorCode.UNSUPPORTED_IMAGE_FORMAT),
        ("data:image/svg+xml;base64,PHN2Zz4=", ErrorCode.UNSUPPORTED_IMAGE_FORMAT),
        (base64.b64encode(b"hello world, not an image").decode(), ErrorCode.UNSUPPORTED_IMAGE_FORMAT),
        (base64.b64encode(b"%PDF-1.4 ...").decode(), ErrorCode.UNSUPPORTED_IMAGE_FORMAT),
    ],
)
def test_malformed_input_has_its_code(value: str, code: ErrorCode) -> None:
    assert _code(value) == code


def test_tiff_is_refused_by_name() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="TIFF")
    with pytest.raises(ServiceError) as info:
        decode_image(base64.b64encode(buf.getvalue()).decode(), LIMITS)
    assert info.value.code == ErrorCode.UNSUPPORTED_IMAGE_FORMAT and "TIFF" in info.value.message


def test_truncated_image_is_a_decode_error_not_a_crash() -> None:
    raw = png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))
    assert _code(base64.b64encode(raw[: len(raw) // 2]).decode()) == ErrorCode.IMAGE_DECODE_FAILED


def test_dimension_limits_are_checked_from_the_header() -> None:
    assert _code(encode_data_uri(Image.new("RGB", (2000, 10)))) == ErrorCode.IMAGE_TOO_LARGE
    assert _code(encode_data_uri(Image.new("RGB", (4, 4)))) == ErrorCode.IMAGE_TOO_SMALL


def _png_bomb(side: int) -> bytes:
    """A valid PNG header declaring side x side grey pixels, with a tiny (highly compressed) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * side
    body = zlib.compress(row * 64, 9)  # only the first rows: the header is what the bomb check reads
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decompressing() -> None:
    bomb = _png_bomb(60_000)  # 3.6 gigapixels declared, a few KB sent
    assert len(bomb) < 8000
    big_limits = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 62, max_side=1 << 30)
    # Our own limit catches it first; with ours lifted, Pillow's bomb guard is the second line.
    assert _code(base64.b64encode(bomb).decode()) == ErrorCode.IMAGE_TOO_LARGE
    assert _code(base64.b64encode(bomb).decode(), big_limits) == ErrorCode.IMAGE_TOO_LARGE


def test_payload_over_the_byte_limit_is_refused_before_decoding() -> None:
    small = ImageLimits(max_bytes=100)
    with pytest.raises(ServiceError) as info:
        decode_image(base64.b64encode(b"\x00" * 1000).decode(), small)
    assert info.value.code == ErrorCode.PAYLOAD_TOO_LARGE and info.value.status == 413
