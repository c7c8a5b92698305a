"""Turning a request's image reference into a decoded RGB ``PIL.Image``, under limits (pure: no Triton, no torch).

What a request may carry (``load_image``):

* a ``data:`` URL, ``data:image/png;base64,<base64>`` (any ``image/*`` media type; the bytes decide the format);
* raw base64 text of an image file (no scheme);
* the raw bytes of an image file (a ``bytes`` object: what a Triton ``BYTES`` element holds);
* ``http(s)://`` URLs only for hosts listed in ``MediaPolicy.allowed_media_domains``;
* ``file:`` URLs only under ``MediaPolicy.allowed_local_media_path``.

The remote-media flags keep vLLM's names (``--allowed-media-domains``, ``--allowed-local-media-path``) and its
matching rules (exact host name; a file's *resolved* path, symlinks followed, must lie below the resolved
directory), with one deliberate difference: vLLM fetches any http(s) URL when no domain is listed, here an empty
list means no http(s) at all, so that by default nothing is ever fetched.

Limits (``MediaLimits``): encoded bytes (checked before base64 is decoded and before a file or response body is
read past the cap), pixel count (checked on the header's width and height, before any pixel is decoded), and the
formats PNG, JPEG, WebP and GIF (first frame only; animated PNG and WebP likewise give their first frame).
Pillow's own decompression-bomb guard is set explicitly (``PILLOW_GUARD_PIXELS``) instead of Pillow's global
default; ``MediaLimits.max_pixels`` may not exceed it, so Pillow never warns about an image we accept.

Every failure raises ``MediaError`` (an ``InputError``: Triton INVALID_ARG / HTTP 400) whose message says what is
wrong and, where there is one, the fix.

Not supported: percent-encoded (non-base64) ``data:`` URLs, SVG, TIFF, BMP, AVIF/HEIC, video; a host's IP
address is not checked against private ranges (only the host name as written is matched).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_ENCODED_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
DEFAULT_FETCH_TIMEOUT_S = 10.0

# Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that, at Image.open,
# from the header alone.  Its default (~89 MP) is a process-wide global that any library may change; we set
# it explicitly so the guard is a known value.  Our own check (MediaLimits.max_pixels <= this) comes first for
# everything we would accept, so the guard only ever fires on images we refuse anyway.
PILLOW_GUARD_PIXELS = 128_000_000
Image.MAX_IMAGE_PIXELS = PILLOW_GUARD_PIXELS

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_WHITESPACE = re.compile(rb"[ \t\r\n]+")

# Leading bytes of formats we refuse by name, so "unsupported format" is told apart from "not an image".
_OTHER_SIGNATURES = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)


class MediaError(InputError):
    """An image in a request cannot be used; the message says what is wrong (Triton INVALID_ARG / HTTP 400)."""


@dataclass(frozen=True)
class MediaLimits:
    """What an image may cost before it is decoded.

    ``max_encoded_bytes``: size of the image file (after base64 decoding); ``max_pixels``: width × height from
    the header; ``formats``: Pillow format names accepted (subset of PNG, JPEG, WEBP, GIF).
    """

    max_encoded_bytes: int = DEFAULT_MAX_ENCODED_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        if self.max_encoded_bytes < 1:
            raise ValueError(f"MediaLimits.max_encoded_bytes must be >= 1, got {self.max_encoded_bytes}")
        if not 1 <= self.max_pixels <= PILLOW_GUARD_PIXELS:
            raise ValueError(
                f"MediaLimits.max_pixels must be between 1 and {PILLOW_GUARD_PIXELS} (Pillow's decompression-bomb "
                f"guard, media.PILLOW_GUARD_PIXELS), got {self.max_pixels}"
            )
        unknown = set(self.formats) - set(DEFAULT_FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"MediaLimits.formats must be a non-empty subset of {DEFAULT_FORMATS}, got {self.formats}")


@dataclass(frozen=True)
class MediaPolicy:
    """Which non-``data:`` references may be loaded (vLLM's ``--allowed-media-domains`` /
    ``--allowed-local-media-path``).

    The default allows ``data:`` URLs and inline base64 / bytes only.  ``allowed_media_domains`` lists exact host
    names (case-insensitive, no wildcard, a subdomain is a different host); ``allowed_local_media_path`` is a
    directory whose files (after resolving ``..`` and symlinks) may be named by ``file:`` URLs.
    """

    allowed_media_domains: tuple[str, ...] = ()
    allowed_local_media_path: Path | None = None
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S


# --------------------------------------------------------------------------------------------------
# Inline data
# --------------------------------------------------------------------------------------------------


def _too_large(n_bytes: int, limits: MediaLimits, what: str) -> MediaError:
    return MediaError(
        f"{what} is too large: {n_bytes} bytes, the limit is {limits.max_encoded_bytes} bytes "
        f"({limits.max_encoded_bytes / 2**20:.1f} MiB); send a smaller or more compressed image"
    )


def decode_base64(text: str | bytes, limits: MediaLimits = MediaLimits()) -> bytes:
    """Standard base64 (RFC 4648 alphabet, padded; line breaks allowed) to bytes, refusing oversize input
    before decoding it."""
    raw = text.encode("ascii", errors="replace") if isinstance(text, str) else bytes(text)
    raw = _WHITESPACE.sub(b"", raw)
    if not raw:
        raise MediaError("the image's base64 data is empty")
    # 4 base64 characters carry 3 bytes: refuse by length alone, without allocating the decoded copy.
    if (len(raw) // 4) * 3 - raw[-2:].count(b"=") > limits.max_encoded_bytes:
        raise _too_large((len(raw) // 4) * 3, limits, "the image (after base64 decoding)")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(
            f"the image's base64 data is not valid base64 ({exc}); send standard, padded base64 "
            "(alphabet A-Z a-z 0-9 + /)"
        ) from None


def parse_data_url(url: str, limits: MediaLimits = MediaLimits()) -> bytes:
    """The bytes of ``data:image/<type>;base64,<data>``.  The declared media type must be ``image/*``; the
    image format itself is read from the bytes, as vLLM does."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise MediaError("the data: URL has no ',' separating its header from its data (data:image/png;base64,...)")
    params = header[len("data:") :].split(";")
    media_type = params[0].strip().lower()
    if not media_type.startswith("image/"):
        raise MediaError(
            f"the data: URL's media type is {media_type or 'missing'!r}, not an image type; "
            "use data:image/png;base64,... (or image/jpeg, image/webp, image/gif)"
        )
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise MediaError("only base64 data: URLs are supported for images (data:image/png;base64,...)")
    return decode_base64(payload, limits)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def _sniff(data: bytes) -> str | None:
    """The format named by the leading bytes, for the error message only (Pillow decides what decodes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "AVIF/HEIF"
    stripped = data[:256].lstrip()
    for signature, name in _OTHER_SIGNATURES:
        if data.startswith(signature) or stripped.startswith(signature):
            return name
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white, as transformers' ``convert_to_rgb`` does.

    For RGBA this gives the same pixels as vLLM's ``rgba_to_rgb`` (white background, alpha as mask).  For
    ``LA`` and palette images with a transparent index vLLM's ``convert_image_mode`` drops the alpha instead
    (plain ``convert("RGB")``); we follow transformers there, the processors' own reference."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """Decode an image file's bytes to a loaded RGB image (mode ``"RGB"``, size (width, height)).

    Checks, in order: encoded size; format (PNG, JPEG, WebP, GIF, or as ``limits.formats`` narrows them) from
    the header; width × height from the header (nothing decoded yet); then the full decode, where a truncated or
    corrupt file fails.
    """
    if len(data) > limits.max_encoded_bytes:
        raise _too_large(len(data), limits, "the image")
    if not data:
        raise MediaError("the image is empty (0 bytes)")
    sniffed = _sniff(data)
    allowed = ", ".join(limits.formats)
    if sniffed is not None and sniffed not in limits.formats:
        raise MediaError(f"unsupported image format {sniffed}; allowed formats: {allowed}")
    try:
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except Image.DecompressionBombError as exc:
        raise MediaError(
            f"the image has too many pixels (refused from its header: {exc}); the limit is {limits.max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        if sniffed is None:
            raise MediaError(
                f"the data is not an image (no {allowed} signature in its first bytes {data[:8]!r})"
            ) from None
        raise MediaError(f"the {sniffed} image is truncated or corrupt: its header cannot be read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"the {sniffed or 'image'} image is truncated or corrupt: {exc}") from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise MediaError(
                f"the image is too large: {width}x{height} = {width * height} pixels, the limit is "
                f"{limits.max_pixels} pixels; downscale it before sending"
            )
        try:
            image.seek(0)  # GIF / APNG / animated WebP: the first frame only
            image.load()
            return to_rgb(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise MediaError(f"the {image.format or sniffed or 'image'} image is truncated or corrupt: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Remote and local references (vLLM's --allowed-media-domains / --allowed-local-media-path)
# --------------------------------------------------------------------------------------------------


def check_remote_url(url: str, policy: MediaPolicy) -> str:
    """The host name of an http(s) URL that ``policy`` allows; a ``MediaError`` naming the flag otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise MediaError(f"URL scheme {parts.scheme!r} is not allowed for images; use a data: URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise MediaError(f"the image URL {url!r} has no host name")
    if not policy.allowed_media_domains:
        raise MediaError(
            f"http(s) image URLs are not allowed (host {host!r}); send the image inline as a data: URL, or start "
            "the server with --allowed-media-domains listing that host"
        )
    allowed = tuple(d.lower() for d in policy.allowed_media_domains)
    if host not in allowed:
        raise MediaError(
            f"the image URL's host {host!r} is not in --allowed-media-domains {list(allowed)}; "
            "send the image inline as a data: URL"
        )
    return host


def resolve_local_file(url: str, policy: MediaPolicy) -> Path:
    """The resolved path of a ``file:`` URL that lies under ``policy.allowed_local_media_path`` (``..`` and
    symlinks resolved first, as vLLM does); a ``MediaError`` otherwise."""
    if policy.allowed_local_media_path is None:
        raise MediaError(
            "file: image URLs are not allowed; send the image inline as a data: URL, or start the server with "
            "--allowed-local-media-path naming the directory the images are in"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"file: URL {url!r} names a host {parts.netloc!r}; only local files (file:///path) are allowed")
    root = Path(policy.allowed_local_media_path).resolve()
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_absolute():
        raise MediaError(f"file: URL {url!r} is not an absolute path; use file:///absolute/path")
    resolved = path.resolve()
    if root not in resolved.parents:
        raise MediaError(
            f"the file {str(path)!r} is not under --allowed-local-media-path {str(root)!r} "
            "(after resolving '..' and symlinks)"
        )
    if not resolved.is_file():
        raise MediaError(f"the file {str(path)!r} does not exist or is not a regular file")
    return resolved


def read_local_file(url: str, policy: MediaPolicy, limits: MediaLimits = MediaLimits()) -> bytes:
    """The bytes of an allowed ``file:`` URL, never reading past the byte limit."""
    path = resolve_local_file(url, policy)
    with path.open("rb") as handle:
        data = handle.read(limits.max_encoded_bytes + 1)
    if len(data) > limits.max_encoded_bytes:
        raise _too_large(path.stat().st_size, limits, f"the file {str(path)!r}")
    return data


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL the policy allows (else a redirect would escape the domain list)."""

    def __init__(self, policy: MediaPolicy) -> None:
        super().__init__()
        self._policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 (urllib's signature)
        check_remote_url(newurl, self._policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_remote(url: str, policy: MediaPolicy, limits: MediaLimits = MediaLimits()) -> bytes:
    """GET an allowed http(s) URL with ``policy.fetch_timeout_s``, reading at most the byte limit.

    Network I/O: the tests check only the refusals (``check_remote_url``), never this fetch.
    """
    check_remote_url(url, policy)
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    try:
        with opener.open(url, timeout=policy.fetch_timeout_s) as response:
            data = response.read(limits.max_encoded_bytes + 1)
    except MediaError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MediaError(f"fetching the image {url!r} failed: {exc}") from None
    if len(data) > limits.max_encoded_bytes:
        raise _too_large(len(data), limits, f"the image at {url!r}")
    return data


def load_image(
    source: str | bytes, policy: MediaPolicy = MediaPolicy(), limits: MediaLimits = MediaLimits()
) -> Image.Image:
    """A request's image (``data:`` URL, raw base64 text, raw file bytes, or an allowed http(s) / ``file:`` URL)
    as a loaded RGB ``PIL.Image``.  A ``bytes`` source is the image file itself; text is a URL or base64."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), limits)
    if not isinstance(source, str):
        raise MediaError(f"an image must be a data: URL, base64 text or bytes, got {type(source).__name__}")
    text = source.strip()
    match = _SCHEME.match(text)  # the base64 alphabet has no ':', so a scheme is unambiguous
    if match is None:
        return decode_image(decode_base64(text, limits), limits)
    scheme = match.group(1).lower()
    if scheme == "data":
        return decode_image(parse_data_url(text, limits), limits)
    if scheme in ("http", "https"):
        return decode_image(fetch_remote(text, policy, limits), limits)
    if scheme == "file":
        return decode_image(read_local_file(text, policy, limits), limits)
    raise MediaError(f"URL scheme {scheme!r} is not allowed for images; use a data: URL (data:image/png;base64,...)")
