"""dsb.data.targets: body / border / touching on tiny hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from dsb.data.targets import make_targets
from dsb.errors import ConfigError

ALL = ["body", "border", "touching"]


def two_touching_squares() -> np.ndarray:
    """Nucleus 1 in columns 2..5, nucleus 2 in columns 6..9, rows 2..7: they share an edge."""
    lab = np.zeros((10, 12), np.int32)
    lab[2:8, 2:6] = 1
    lab[2:8, 6:10] = 2
    return lab


def ring(mask: np.ndarray, px: int = 1) -> np.ndarray:
    """Inner contour of a binary mask, ``px`` thick (8-connected), away from image edges."""
    return mask & ~ndi.binary_erosion(mask, np.ones((3, 3)), iterations=px)


def test_two_touching_squares_each_get_own_border_and_contact_is_touching():
    lab = two_touching_squares()
    before = lab.copy()
    t = make_targets(lab, ALL, border_px=1, touching_px=1)
    assert t.shape == (3, 10, 12) and t.dtype == np.float32
    assert set(np.unique(t)) <= {0.0, 1.0}
    np.testing.assert_array_equal(lab, before)  # input not modified

    np.testing.assert_array_equal(t[0], lab > 0)
    # Each square has its own full 1-px contour, including both sides of the contact.
    expected_border = ring(lab == 1) | ring(lab == 2)
    np.testing.assert_array_equal(t[1], expected_border)
    assert t[1][4, 5] == 1 and t[1][4, 6] == 1
    # Touching: pixels whose 3x3 window sees both nuclei = the two contact columns, plus
    # the background pixel just above/below each end of the contact line.
    expected_touching = np.zeros_like(lab, bool)
    expected_touching[1:9, 5:7] = True
    np.testing.assert_array_equal(t[2], expected_touching)


def test_touching_width_grows_with_touching_px():
    t = make_targets(two_touching_squares(), ["touching"], touching_px=2)
    expected = np.zeros((10, 12), bool)
    expected[0:10, 4:8] = True  # two columns on each side of the contact, rows +-2
    np.testing.assert_array_equal(t[0], expected)


def test_border_px_thickness():
    lab = np.zeros((20, 20), np.int32)
    lab[3:17, 3:17] = 5
    t = make_targets(lab, ["border"], border_px=3)
    np.testing.assert_array_equal(t[0], ring(lab > 0, 3))
    assert t[0][3:6, 10].all() and not t[0][6, 10]


def test_single_disk_has_no_touching_and_a_ring_border():
    yy, xx = np.mgrid[:41, :41]
    lab = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2).astype(np.int32) * 7
    t = make_targets(lab, ALL, border_px=2, touching_px=2)
    assert t[2].sum() == 0
    np.testing.assert_array_equal(t[1], ring(lab > 0, 2))
    np.testing.assert_array_equal(t[0], lab > 0)


def test_gap_between_nuclei():
    lab = np.zeros((8, 13), np.int32)
    lab[2:6, 1:6] = 1
    lab[2:6, 7:12] = 2  # one background column (6) between them
    t = make_targets(lab, ["touching"], touching_px=1)
    expected = np.zeros((8, 13), bool)
    expected[1:7, 6] = True  # only the gap column is within 1 px of both nuclei
    np.testing.assert_array_equal(t[0], expected)
    # A gap of 2 px is farther than touching_px=1 from one of the two nuclei.
    lab2 = np.zeros((8, 14), np.int32)
    lab2[2:6, 1:6] = 1
    lab2[2:6, 8:13] = 2
    assert make_targets(lab2, ["touching"], touching_px=1).sum() == 0
    assert make_targets(lab2, ["touching"], touching_px=2)[0][2:6, 6:8].all()


def test_image_edge_is_not_a_contour():
    lab = np.zeros((10, 10), np.int32)
    lab[0:5, 0:5] = 1  # cut by the top-left image corner
    t = make_targets(lab, ["border"], border_px=1)
    expected = np.zeros_like(lab, bool)
    expected[0:5, 4] = True
    expected[4, 0:5] = True
    np.testing.assert_array_equal(t[0], expected)


def test_channel_order_follows_list():
    lab = two_touching_squares()
    full = make_targets(lab, ALL)
    np.testing.assert_array_equal(make_targets(lab, ["touching", "body"]), full[[2, 0]])
    np.testing.assert_array_equal(make_targets(lab, ["border"]), full[[1]])


def test_label_values_and_dtypes_do_not_matter():
    lab = two_touching_squares()
    ref = make_targets(lab, ALL)
    big = np.where(lab > 0, lab + 70_000, 0).astype(np.int64)  # beyond the uint16 fast path
    np.testing.assert_array_equal(make_targets(big, ALL), ref)
    np.testing.assert_array_equal(make_targets(lab.astype(np.uint16), ALL), ref)
    sparse = np.where(lab == 2, 9, lab)  # non-consecutive labels
    np.testing.assert_array_equal(make_targets(sparse, ALL), ref)


def test_empty_and_degenerate_maps():
    assert make_targets(np.zeros((5, 6), np.int32), ALL).sum() == 0
    assert make_targets(np.zeros((0, 4), np.int32), ALL).shape == (3, 0, 4)
    one = make_targets(np.ones((1, 1), np.int32), ALL)
    np.testing.assert_array_equal(one[:, 0, 0], [1, 0, 0])


@pytest.mark.parametrize(
    "channels, kwargs",
    [(["body", "edges"], {}), ([], {}), (["body"], {"border_px": 0}), (["body"], {"touching_px": -1})],
)
def test_bad_settings_raise_config_error(channels, kwargs):
    with pytest.raises(ConfigError):
        make_targets(two_touching_squares(), channels, **kwargs)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 3), np.int32), np.zeros((4, 4), np.float32), -np.ones((3, 3), np.int32)])
def test_bad_label_maps_raise_value_error(bad):
    with pytest.raises(ValueError):
        make_targets(bad, ALL)


def test_full_size_image():
    """1040x1388 with 300 nuclei, the largest DSB2018 size, some touching. Its speed (tens
    of ms, against seconds for a per-nucleus loop) is timed, with a 500 ms bound, by
    ``benchmarks/targets_speed.py``."""
    rng = np.random.default_rng(0)
    lab = np.zeros((1040, 1388), np.int32)
    yy, xx = np.mgrid[-12:13, -12:13]
    disk = yy**2 + xx**2 <= 144
    for k in range(1, 301):
        r, c = rng.integers(0, 1040 - 25), rng.integers(0, 1388 - 25)
        lab[r : r + 25, c : c + 25][disk] = k
    t = make_targets(lab, ALL)
    assert t.shape == (3, 1040, 1388) and t.dtype == np.float32
    np.testing.assert_array_equal(t[0], lab > 0)
    assert t[1].any() and t[2].any()  # every nucleus's contour; touching where disks meet
