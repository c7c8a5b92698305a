"""``python_backend_models.media``: decoding request images under limits, and the remote-media policy.

Images are generated here with Pillow; nothing touches the network (http(s) is tested only for its refusals).
The RGB conversion is checked against transformers' own ``convert_to_rgb`` (what the reference processors do).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from transformers.image_transforms import convert_to_rgb as hf_convert_to_rgb

from python_backend_models import media
from python_backend_models.errors import InputError
from python_backend_models.media import MediaError, MediaLimits, MediaPolicy, load_image


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.RandomState(seed).randint(0, 256, shape, dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png(height: int = 12, width: int = 20, mode: str = "RGB") -> bytes:
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    return _encode(Image.fromarray(_noise(height, width, channels), mode=mode), "PNG")


def _data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR claims width x height RGB, with a tiny IDAT: a decompression
    bomb's header, without the bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if Pillow decodes any pixel data (the refusal must come from the header alone)."""

    def refuse(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


class TestMediaErrorIsAnInputError:
    def test_media_error_maps_to_invalid_arg(self):
        assert issubclass(MediaError, InputError)


class TestDecodesInlineImagesToRGB:
    def test_png_data_url_round_trips_the_pixels(self):
        pixels = _noise(12, 20)
        image = load_image(_data_url(_encode(Image.fromarray(pixels), "PNG")))
        assert image.mode == "RGB" and image.size == (20, 12)
        np.testing.assert_array_equal(np.asarray(image), pixels)

    def test_raw_base64_and_raw_bytes_and_wrapped_base64_give_the_same_image(self):
        data = _png()
        wrapped = base64.encodebytes(data).decode()  # MIME style, a newline every 76 characters
        assert "\n" in wrapped.strip()
        expected = np.asarray(load_image(data))
        for source in (base64.b64encode(data).decode(), wrapped, _data_url(data)):
            np.testing.assert_array_equal(np.asarray(load_image(source)), expected)

    def test_declared_media_type_does_not_decide_the_format(self):
        # vLLM reads the format from the bytes; a JPEG labelled image/png still decodes.
        jpeg = _encode(Image.fromarray(_noise(16, 16)), "JPEG")
        assert load_image(_data_url(jpeg, "image/png")).size == (16, 16)

    def test_jpeg_webp_and_gif_decode(self):
        rgb = Image.fromarray(_noise(9, 13))
        for fmt in ("JPEG", "WEBP", "GIF"):
            image = load_image(_encode(rgb, fmt))
            assert (image.mode, image.size) == ("RGB", (13, 9)), fmt

    def test_gif_gives_its_first_frame(self):
        red = Image.new("RGB", (8, 6), (255, 0, 0))
        blue = Image.new("RGB", (8, 6), (0, 0, 255))
        data = _encode(red, "GIF", save_all=True, append_images=[blue])
        assert Image.open(io.BytesIO(data)).n_frames == 2
        assert set(map(tuple, np.asarray(load_image(data)).reshape(-1, 3))) == {(255, 0, 0)}

    @pytest.mark.parametrize("mode", ["RGBA", "LA", "L"])
    def test_rgb_conversion_equals_transformers(self, mode):
        data = _png(10, 14, mode)
        expected = hf_convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
        np.testing.assert_array_equal(np.asarray(load_image(data)), expected)

    def test_rgba_equals_vllms_rgba_to_rgb(self):
        # vLLM's convert_image_mode for RGBA: a white RGB image with the RGBA pasted through its alpha band.
        rgba = Image.fromarray(_noise(16, 24, 4), mode="RGBA")
        expected = Image.new("RGB", rgba.size, (255, 255, 255))
        expected.paste(rgba, mask=rgba.split()[3])
        np.testing.assert_array_equal(np.asarray(load_image(_encode(rgba, "PNG"))), np.asarray(expected))

    def test_palette_transparency_is_composited_on_white_like_transformers(self):
        palette = Image.fromarray(_noise(10, 10)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        data = _encode(palette, "PNG", transparency=0)
        expected = hf_convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
        decoded = np.asarray(load_image(data))
        np.testing.assert_array_equal(decoded, expected)
        assert (decoded == 255).all(axis=-1).any()  # the transparent index became white


class TestBadImagesAreMediaErrors:
    def test_truncated_png(self):
        data = _png(64, 64)
        with pytest.raises(MediaError, match=r"PNG image is truncated or corrupt"):
            load_image(data[: len(data) // 2])

    def test_png_cut_inside_its_header(self):
        with pytest.raises(MediaError, match=r"PNG image is truncated or corrupt"):
            load_image(_png()[:20])

    def test_corrupt_png_checksum(self):
        data = bytearray(_png())
        data[30] ^= 0xFF  # inside IHDR: its CRC no longer matches
        with pytest.raises(MediaError, match=r"PNG image is truncated or corrupt"):
            load_image(bytes(data))

    def test_not_an_image(self):
        with pytest.raises(MediaError, match=r"not an image \(no PNG, JPEG, WEBP, GIF signature"):
            load_image(b"hello, this is plain text and no picture")

    def test_empty_bytes(self):
        with pytest.raises(MediaError, match=r"empty"):
            load_image(b"")

    @pytest.mark.parametrize("fmt,name", [("BMP", "BMP"), ("TIFF", "TIFF")])
    def test_unsupported_format_is_named(self, fmt, name):
        data = _encode(Image.fromarray(_noise(4, 4)), fmt)
        with pytest.raises(MediaError, match=rf"unsupported image format {name}; allowed formats: PNG, JPEG"):
            load_image(data)

    def test_limits_can_narrow_the_formats(self):
        jpeg = _encode(Image.fromarray(_noise(4, 4)), "JPEG")
        with pytest.raises(MediaError, match=r"unsupported image format JPEG; allowed formats: PNG$"):
            load_image(jpeg, limits=MediaLimits(formats=("PNG",)))

    def test_bad_base64(self):
        with pytest.raises(MediaError, match=r"not valid base64"):
            load_image("data:image/png;base64,iVBORw0KGgo$$$")
        with pytest.raises(MediaError, match=r"not valid base64"):
            load_image("iVBORw0KGgoAAAANSUhEUgAAAA")  # unpadded

    def test_data_url_that_is_not_an_image_type(self):
        with pytest.raises(MediaError, match=r"media type is 'text/plain', not an image type"):
            load_image("data:text/plain;base64,aGVsbG8=")

    def test_data_url_without_base64(self):
        with pytest.raises(MediaError, match=r"only base64 data: URLs"):
            load_image("data:image/png,%89PNG")

    def test_data_url_without_comma(self):
        with pytest.raises(MediaError, match=r"no ','"):
            load_image("data:image/png;base64")

    def test_too_many_encoded_bytes(self):
        data = _png(32, 32)
        limits = MediaLimits(max_encoded_bytes=len(data) - 1)
        with pytest.raises(MediaError, match=rf"too large: {len(data)} bytes, the limit is {len(data) - 1} bytes"):
            load_image(data, limits=limits)

    def test_oversize_base64_is_refused_before_decoding(self, monkeypatch):
        def refuse(*args, **kwargs):
            raise AssertionError("base64 was decoded")

        monkeypatch.setattr(media.base64, "b64decode", refuse)
        with pytest.raises(MediaError, match=r"after base64 decoding\) is too large"):
            load_image(_data_url(b"\0" * 3000), limits=MediaLimits(max_encoded_bytes=1000))

    def test_too_many_pixels(self, no_pixel_decoding):
        with pytest.raises(MediaError, match=r"too large: 20x12 = 240 pixels, the limit is 239 pixels"):
            load_image(_png(12, 20), limits=MediaLimits(max_pixels=239))

    def test_header_over_the_default_limit_is_refused_without_decoding(self, no_pixel_decoding):
        # 7000 x 7000 = 49 MP: over the 40 MP default, under Pillow's guard, so our own check refuses it.
        with pytest.raises(MediaError, match=r"too large: 7000x7000 = 49000000 pixels, the limit is 40000000"):
            load_image(_png_header_only(7000, 7000))

    def test_decompression_bomb_is_refused_from_its_header(self, no_pixel_decoding):
        # 100000 x 100000 = 10^10 pixels (30 GB as RGB): Pillow's explicitly set guard refuses it in open().
        with pytest.raises(MediaError, match=r"too many pixels .*decompression bomb"):
            load_image(_data_url(_png_header_only(100_000, 100_000)))

    def test_pillow_guard_is_set_explicitly(self):
        assert Image.MAX_IMAGE_PIXELS == media.PILLOW_GUARD_PIXELS
        with pytest.raises(ValueError, match=r"max_pixels must be between 1 and"):
            MediaLimits(max_pixels=media.PILLOW_GUARD_PIXELS + 1)


class TestRemoteMediaPolicy:
    def test_http_is_refused_by_default(self):
        for url in ("http://example.com/a.png", "https://example.com/a.png"):
            with pytest.raises(MediaError, match=r"not allowed .*--allowed-media-domains"):
                load_image(url)

    def test_unlisted_host_is_refused(self):
        policy = MediaPolicy(allowed_media_domains=("images.example.com",))
        for url in ("https://example.com/a.png", "https://evil.images.example.com/a.png",
                    "https://images.example.com.evil.net/a.png", "https://user@evil.net/images.example.com"):
            with pytest.raises(MediaError, match=r"is not in --allowed-media-domains"):
                load_image(url, policy=policy)

    def test_listed_host_passes_the_check(self):
        policy = MediaPolicy(allowed_media_domains=("images.example.com",))
        assert media.check_remote_url("https://IMAGES.example.com:8443/p.png?x=1", policy) == "images.example.com"

    def test_redirect_to_an_unlisted_host_is_refused(self):
        handler = media._CheckedRedirects(MediaPolicy(allowed_media_domains=("images.example.com",)))
        with pytest.raises(MediaError, match=r"'evil.net' is not in --allowed-media-domains"):
            handler.redirect_request(None, None, 302, "Found", {}, "https://evil.net/x.png")

    @pytest.mark.parametrize("url", ["ftp://example.com/a.png", "javascript:alert(1)", "gopher://x/"])
    def test_other_schemes_are_refused(self, url):
        with pytest.raises(MediaError, match=r"URL scheme .* is not allowed for images"):
            load_image(url, policy=MediaPolicy(allowed_media_domains=("example.com",)))

    def test_file_url_is_refused_by_default(self, tmp_path):
        path = tmp_path / "a.png"
        path.write_bytes(_png())
        with pytest.raises(MediaError, match=r"file: image URLs are not allowed.*--allowed-local-media-path"):
            load_image(path.as_uri())


class TestAllowedLocalMediaPath:
    @pytest.fixture
    def layout(self, tmp_path) -> tuple[Path, Path]:
        allowed = tmp_path / "allowed"
        (allowed / "sub dir").mkdir(parents=True)
        (allowed / "sub dir" / "page 1.png").write_bytes(_png(6, 9))
        (tmp_path / "secret.png").write_bytes(_png(5, 5))
        return allowed, tmp_path / "secret.png"

    def test_file_under_the_directory_loads(self, layout):
        allowed, _ = layout
        url = (allowed / "sub dir" / "page 1.png").as_uri()  # percent-encoded spaces
        assert "%20" in url
        assert load_image(url, policy=MediaPolicy(allowed_local_media_path=allowed)).size == (9, 6)

    def test_dot_dot_out_of_the_directory_is_refused(self, layout):
        allowed, secret = layout
        url = f"file://{allowed}/sub%20dir/../../{secret.name}"
        with pytest.raises(MediaError, match=r"is not under --allowed-local-media-path"):
            load_image(url, policy=MediaPolicy(allowed_local_media_path=allowed))

    def test_symlink_out_of_the_directory_is_refused(self, layout):
        allowed, secret = layout
        link = allowed / "innocent.png"
        link.symlink_to(secret)
        with pytest.raises(MediaError, match=r"is not under --allowed-local-media-path"):
            load_image(link.as_uri(), policy=MediaPolicy(allowed_local_media_path=allowed))

    def test_symlink_within_the_directory_loads(self, layout):
        allowed, _ = layout
        link = allowed / "alias.png"
        link.symlink_to(allowed / "sub dir" / "page 1.png")
        assert load_image(link.as_uri(), policy=MediaPolicy(allowed_local_media_path=allowed)).size == (9, 6)

    def test_the_directory_itself_a_missing_file_and_a_remote_host_are_refused(self, layout):
        allowed, _ = layout
        policy = MediaPolicy(allowed_local_media_path=allowed)
        with pytest.raises(MediaError, match=r"is not under"):
            load_image(allowed.as_uri(), policy=policy)
        with pytest.raises(MediaError, match=r"does not exist or is not a regular file"):
            load_image((allowed / "missing.png").as_uri(), policy=policy)
        with pytest.raises(MediaError, match=r"names a host 'fileserver'"):
            load_image(f"file://fileserver{allowed}/sub%20dir/page%201.png", policy=policy)

    def test_oversize_file_is_refused(self, layout):
        allowed, _ = layout
        url = (allowed / "sub dir" / "page 1.png").as_uri()
        with pytest.raises(MediaError, match=r"too large"):
            load_image(url, policy=MediaPolicy(allowed_local_media_path=allowed),
                       limits=MediaLimits(max_encoded_bytes=10))
