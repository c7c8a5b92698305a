"""Pixel shuffle (``python_backend_models.pixel_shuffle``) against hand-indexed tensors.

Each input value encodes where it came from (``100*row + 10*col + channel``), so the expected outputs below
are written from the index rule alone: output token ``(i, j)`` of a v2 shuffle with factor f holds, channel
block by channel block, the patches ``(f*i + di, f*j + dj)`` for ``di`` then ``dj`` in ``0..f-1``; v1 is
the same with the output grid transposed.
"""

from __future__ import annotations

import pytest
import torch

from python_backend_models.pixel_shuffle import pixel_shuffle, shuffle_settings, shuffle_vision_tokens


def coded(rows: int, cols: int, channels: int, batch: int = 1) -> torch.Tensor:
    """(batch, rows, cols, channels) with x[n, r, c, ch] = 1000*n + 100*r + 10*c + ch."""
    n, r, c, ch = torch.meshgrid(
        torch.arange(batch), torch.arange(rows), torch.arange(cols), torch.arange(channels), indexing="ij"
    )
    return (1000 * n + 100 * r + 10 * c + ch).to(torch.float32)


def test_a_2x2_grid_becomes_one_token_in_row_major_block_order():
    x = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]])  # (1, 2, 2, 1): [[a, b], [c, d]]
    assert pixel_shuffle(x).tolist() == [[[[1.0, 2.0, 3.0, 4.0]]]]


def test_v2_on_a_4x4_grid_with_two_channels_written_out_by_hand():
    out = pixel_shuffle(coded(4, 4, 2), 0.5, "v2")
    assert out.shape == (1, 2, 2, 8)
    # token (0, 0): patches (0,0) (0,1) (1,0) (1,1), two channels each
    assert out[0, 0, 0].tolist() == [0, 1, 10, 11, 100, 101, 110, 111]
    # token (0, 1): patches (0,2) (0,3) (1,2) (1,3)
    assert out[0, 0, 1].tolist() == [20, 21, 30, 31, 120, 121, 130, 131]
    # token (1, 0): patches (2,0) (2,1) (3,0) (3,1)
    assert out[0, 1, 0].tolist() == [200, 201, 210, 211, 300, 301, 310, 311]
    assert out[0, 1, 1].tolist() == [220, 221, 230, 231, 320, 321, 330, 331]


def test_v1_leaves_the_output_grid_transposed():
    out = pixel_shuffle(coded(4, 4, 2), 0.5, "v1")
    assert out[0, 0, 1].tolist() == [200, 201, 210, 211, 300, 301, 310, 311]  # v2's token (1, 0)
    assert out[0, 1, 0].tolist() == [20, 21, 30, 31, 120, 121, 130, 131]  # v2's token (0, 1)


@pytest.mark.parametrize("ratio, f", [(0.5, 2), (0.25, 4)])
@pytest.mark.parametrize("rows, cols", [(4, 8), (8, 4), (8, 8)])
def test_every_position_follows_the_index_rule(ratio, f, rows, cols):
    c = 3
    x = coded(rows, cols, c, batch=2)
    out = pixel_shuffle(x, ratio, "v2")
    assert out.shape == (2, rows // f, cols // f, c * f * f) and out.is_contiguous()
    for n in range(2):
        for i in range(rows // f):
            for j in range(cols // f):
                for di in range(f):
                    for dj in range(f):
                        for ch in range(c):
                            assert out[n, i, j, (di * f + dj) * c + ch] == x[n, f * i + di, f * j + dj, ch]


def test_vision_tokens_of_a_square_grid_shuffle_to_a_quarter_as_many():
    # 16 row-major tokens of a 4x4 patch grid -> 4 tokens, row-major over the 2x2 output grid
    tokens = coded(4, 4, 2).reshape(1, 16, 2)
    out = shuffle_vision_tokens(tokens)
    assert out.shape == (1, 4, 8)
    assert out[0, 1].tolist() == [20, 21, 30, 31, 120, 121, 130, 131]  # output token (0, 1)
    assert out[0, 2].tolist() == [200, 201, 210, 211, 300, 301, 310, 311]  # output token (1, 0)


def test_dtype_is_kept():
    assert pixel_shuffle(coded(2, 2, 1).to(torch.bfloat16)).dtype == torch.bfloat16


def test_shapes_and_settings_that_cannot_shuffle_are_refused():
    with pytest.raises(ValueError, match="3x4 patch grid"):
        pixel_shuffle(coded(3, 4, 1))
    with pytest.raises(ValueError, match="square patch grid"):
        shuffle_vision_tokens(torch.zeros(1, 12, 2))
    with pytest.raises(ValueError, match="1/k"):
        pixel_shuffle(coded(4, 4, 1), 0.3)
    with pytest.raises(ValueError, match="ps_version"):
        pixel_shuffle(coded(4, 4, 1), 0.5, "v3")
    with pytest.raises(ValueError, match="ps_version"):
        shuffle_settings({"downsample_ratio": 0.5, "ps_version": "v9"})
    assert shuffle_settings({"downsample_ratio": 0.5, "ps_version": "v2"}) == (0.5, "v2")
