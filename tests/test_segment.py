"""dsb segment: any images in; label images, ROIs, GeoJSON and measurements out.

The model here is a tiny U-Net++ checkpoint wired by hand to threshold the image's
intensity (one path of centre taps through the stem and the top decoder nodes), so it
finds real blobs in synthetic images in milliseconds; only the last test uses the shipped
weights, on three real stage-1 test images (skipped without the data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from cli.main import app
from dsb.config import config_from_dict
from dsb.data.images import collect_inputs, read_image_file, select_channels, to_model_uint8
from dsb.data.synthetic import make_sample
from dsb.errors import DataError, DsbError
from dsb.segmentation import (DEFAULT_CHECKPOINT, Segmenter, instance_outlines, measure_nuclei, read_label_image,
                            write_geojson, write_imagej_rois, write_label_image)

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --------------------------------------------------------------------------- fixtures


def threshold_model(cfg, level: float = 3.35, gain: float = 20.0):
    """A DsbUNetPlusPlus whose body logit is ``gain * (smoothed intensity - level)``."""
    from dsb.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
                if name.startswith(("encoder.conv1", "nodes.x_0_", "heads.")):
                    c = mod.kernel_size[0] // 2
                    if mod.in_channels == 3:
                        mod.weight[0, :, c, c] = 1.0 / 3
                    else:
                        mod.weight[0, 0, c, c] = 1.0
            elif isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0)
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        model.encoder.bn1.bias[0] = 3.0  # keep the intensity path above the ReLUs
        for head in model.heads.values():
            head.logits.weight[0, 0, 1, 1] = gain
            head.logits.bias[0] = -gain * level
            head.logits.bias[1:] = -10.0  # no border / touching
    return model


TINY = {"name": "tiny", "model": {"encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8]},
        "infer": {"tta": "none", "rescale_area_px": 0.0},
        "postprocess": {"min_seed_area_px": 4, "min_area_px": 8}}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from dsb.models.checkpoint import save_checkpoint

    cfg = config_from_dict(json.loads(json.dumps(TINY)))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", threshold_model(cfg), cfg)


@pytest.fixture(scope="module")
def segmenter(tiny_ckpt) -> Segmenter:
    return Segmenter.load(tiny_ckpt, device="cpu")


def fluo(seed: int, shape=(96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Bright blobs on a dark background, RGB uint8, and their instances."""
    labels = blob_labels(shape, seed, n_tries=max(14, shape[0] * shape[1] // 600))
    rng = np.random.default_rng(seed)
    signal = ndi.gaussian_filter((labels > 0).astype(np.float32), 0.7) * 170 + 20
    gray = np.clip(signal + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), labels


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rasterise(xy: np.ndarray, shape) -> np.ndarray:
    """Pixels whose centre is inside a polygon in pixel-corner coordinates."""
    from skimage.draw import polygon

    rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
    mask = np.zeros(shape, bool)
    mask[rr, cc] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def blob_labels(shape=(80, 100), seed=0, n_tries=14) -> np.ndarray:
    """Hand-made instances: ellipses of several sizes, two touching, one 1-pixel nucleus."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    n = 0
    for _ in range(n_tries):
        r, c = rng.integers(6, shape[0] - 6), rng.integers(6, shape[1] - 6)
        rr, cc = ellipse(r, c, rng.uniform(2, 8), rng.uniform(2, 8), shape, rotation=rng.uniform(0, np.pi))
        mask = np.zeros(shape, bool)
        mask[rr, cc] = True
        pieces, n_pieces = ndi.label(mask & (labels == 0))  # one 4-connected piece per nucleus
        if n_pieces == 0:
            continue
        piece = pieces == np.bincount(pieces.ravel())[1:].argmax() + 1
        if piece.sum() < 3:
            continue
        n += 1
        labels[piece] = n
    labels[0:6, 0:5] = n + 1          # at the image corner
    labels[0:6, 5:9] = n + 2          # touching it
    labels[shape[0] - 1, shape[1] - 1] = n + 3  # one pixel
    return labels


# --------------------------------------------------------------------------- reading


def test_read_every_image_kind(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    twelve = rng.integers(0, 4096, (20, 30), dtype=np.uint16)
    two = rng.integers(0, 4096, (2, 20, 30), dtype=np.uint16)
    cases = {
        "gray.png": (lambda p: write_png(p, gray), (20, 30, 1), np.uint8),
        "rgb.png": (lambda p: write_png(p, rgb), (20, 30, 3), np.uint8),
        "rgba.png": (lambda p: write_png(p, np.dstack([rgb, np.full((20, 30), 255, np.uint8)])), (20, 30, 3), np.uint8),
        "sixteen.png": (lambda p: write_png(p, twelve), (20, 30, 1), np.uint16),
        "photo.jpg": (lambda p: Image.fromarray(rgb).save(p, quality=95), (20, 30, 3), np.uint8),
        "old.bmp": (lambda p: Image.fromarray(gray).save(p), (20, 30, 1), np.uint8),
        "gray.tif": (lambda p: tifffile.imwrite(p, gray), (20, 30, 1), np.uint8),
        "twelve.tif": (lambda p: tifffile.imwrite(p, twelve), (20, 30, 1), np.uint16),
        "rgb.tif": (lambda p: tifffile.imwrite(p, rgb, photometric="rgb"), (20, 30, 3), np.uint8),
        "first.tif": (lambda p: tifffile.imwrite(p, two, imagej=True, metadata={"axes": "CYX"}), (20, 30, 2), np.uint16),
        "last.tif": (lambda p: tifffile.imwrite(p, np.moveaxis(two, 0, -1), photometric="minisblack",
                                                planarconfig="contig"), (20, 30, 2), np.uint16),
        "plane.ome.tif": (lambda p: tifffile.imwrite(p, two[:, None, None], ome=True, metadata={"axes": "CZTYX"}),
                          (20, 30, 2), np.uint16),
        "float.tif": (lambda p: tifffile.imwrite(p, twelve.astype(np.float32) / 7), (20, 30, 1), np.float32),
    }
    for name, (make, shape, dtype) in cases.items():
        make(tmp_path / name)
        pixels = read_image_file(tmp_path / name)
        assert pixels.shape == shape and pixels.dtype == dtype, name
    assert np.array_equal(read_image_file(tmp_path / "first.tif")[..., 1], two[1])
    assert np.array_equal(read_image_file(tmp_path / "last.tif")[..., 0], two[0])
    assert np.array_equal(read_image_file(tmp_path / "plane.ome.tif")[..., 1], two[1])

    tifffile.imwrite(tmp_path / "stack.tif", rng.integers(0, 255, (5, 20, 30), dtype=np.uint8),
                     imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match=r"stack.tif: a z-stack of 5 planes"):
        read_image_file(tmp_path / "stack.tif")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="junk.png: not a readable PNG"):
        read_image_file(tmp_path / "junk.png")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(DataError, match="empty.tif"):
        read_image_file(tmp_path / "empty.tif")


def test_channels_and_normalisation():
    pixels = np.zeros((10, 12, 2), np.uint16)
    pixels[..., 1] = np.arange(120, dtype=np.uint16).reshape(10, 12) * 30  # 12-bit data, 0..3570
    assert select_channels(pixels, 2)[..., 0].max() == 3570
    with pytest.raises(DataError, match="2 channels; choose the nuclear one with --channel"):
        select_channels(pixels, None, "x.tif")
    with pytest.raises(DataError, match="--channel 3 but the image has 2"):
        select_channels(pixels, 3, "x.tif")
    assert select_channels(pixels[..., :1], 2).shape == (10, 12, 1)  # gray ignores --channel
    model = to_model_uint8(select_channels(pixels, 2))
    assert model.shape == (10, 12, 3) and model.dtype == np.uint8
    assert model.min() == 0 and model.max() == 255  # 12-bit data fills the range
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(to_model_uint8(rgb), rgb)  # 8-bit: as the model was trained
    assert to_model_uint8(pixels[..., 1:], "none").max() == round(3570 * 255 / 4095)
    assert np.array_equal(to_model_uint8(np.zeros((4, 4, 1), np.uint16)), np.zeros((4, 4, 3), np.uint8))


def test_collect_inputs(tmp_path):
    image, _ = fluo(0, (32, 40))
    write_png(tmp_path / "dir" / "a.png", image)
    write_png(tmp_path / "dir" / "sub" / "b.png", image)
    tifffile.imwrite(tmp_path / "dir" / "sub" / "c.tif", image[..., 0])
    (tmp_path / "dir" / "notes.txt").write_text("not an image")
    write_png(tmp_path / "single.png", image)
    names = [s.name for s in collect_inputs([tmp_path / "dir", tmp_path / "single.png", str(tmp_path / "dir" / "*.png")])]
    assert names == ["a", "sub/b", "sub/c", "single"]  # a.png given twice: once
    from dsb.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "stage", n=2, seed=0, masks=False)
    write_synthetic_dataset(tmp_path / "zipped" / "stage.zip", n=2, seed=0, masks=False)
    folder = collect_inputs([tmp_path / "stage"])
    zipped = collect_inputs([tmp_path / "zipped" / "stage.zip"])
    assert [s.name for s in folder] == [s.name for s in zipped] and len(folder) == 2
    assert folder[0].read().shape == zipped[0].read().shape
    with pytest.raises(DataError, match="would both write single_labels"):
        write_png(tmp_path / "other" / "single.png", image)
        collect_inputs([tmp_path / "single.png", tmp_path / "other"])
    with pytest.raises(DataError, match="nothing.png: no such file or folder"):
        collect_inputs([tmp_path / "nothing.png"])
    with pytest.raises(DataError, match="notes.txt: not an image file"):
        collect_inputs([tmp_path / "dir" / "notes.txt"])
    with pytest.raises(DataError, match="matches no image files"):
        collect_inputs([str(tmp_path / "*.jpg")])


# --------------------------------------------------------------------------- outputs


def test_rois_and_geojson_rasterise_to_the_instances(tmp_path):
    import roifile
    import shapely.geometry

    labels = blob_labels()
    outlines = instance_outlines(labels)
    n = int(labels.max())
    assert [lab for lab, _ in outlines] == list(range(1, n + 1))
    path = write_imagej_rois(tmp_path / "rois.zip", outlines)
    rois = roifile.roiread(path)
    assert len(rois) == n
    for index, roi in enumerate(rois, start=1):
        mask = rasterise(roi.coordinates(), labels.shape)
        assert iou(mask, labels == index) >= 0.9, (index, iou(mask, labels == index))
        assert roi.name == f"{index:04d}"
    geo = json.loads(write_geojson(tmp_path / "x.geojson", outlines, "x").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == n
    for feature in geo["features"]:
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.geom_type == "Polygon", feature["properties"]
        label = feature["properties"]["label"]
        # The polygon's area is the instance's pixel count less the cut corners.
        assert 0.5 * (labels == label).sum() <= polygon.area <= (labels == label).sum()
        assert feature["properties"]["objectType"] == "detection"


def test_label_images_keep_shape_and_dtype(tmp_path):
    labels = blob_labels()
    back = read_image_file(write_label_image(tmp_path / "a_labels.tif", labels))
    assert back.dtype == np.uint16 and back.shape == labels.shape + (1,)
    assert np.array_equal(read_label_image(tmp_path / "a_labels.tif"), labels)
    png = write_label_image(tmp_path / "a_labels.png", labels, "png")
    assert Image.open(png).mode.startswith("I;16") and np.array_equal(read_label_image(png), labels)
    many = np.arange(1, 300 * 300 + 1, dtype=np.int32).reshape(300, 300)  # 90,000 nuclei
    assert tifffile.imread(write_label_image(tmp_path / "many.tif", many)).dtype == np.uint32
    with pytest.raises(DataError, match="do not fit a 16-bit PNG"):
        write_label_image(tmp_path / "many.png", many, "png")


def test_measurements_one_row_per_nucleus():
    labels = blob_labels()
    pixels = np.dstack([labels * 10, labels * 3 + 1]).astype(np.uint16)
    table = measure_nuclei(labels, pixels, "img")
    assert list(table["label"]) == list(range(1, labels.max() + 1))
    assert np.array_equal(table["area_px"], np.bincount(labels.ravel())[1:])
    assert np.allclose(table["mean_intensity_ch1"], table["label"] * 10)
    assert np.allclose(table["max_intensity_ch2"], table["label"] * 3 + 1)
    assert {"centroid_y", "bbox_right", "equivalent_diameter_px", "eccentricity", "solidity"} <= set(table.columns)
    assert (table["image"] == "img").all()


# --------------------------------------------------------------------------- segmenting


def test_blocks_give_the_whole_image_instances(segmenter):
    image = np.concatenate([np.concatenate([fluo(s, (150, 170))[0] for s in (1, 2)], axis=1),
                            np.concatenate([fluo(s, (150, 170))[0] for s in (3, 4)], axis=1)], axis=0)
    whole, _ = segmenter.label_map(image)
    blocks, _ = segmenter.label_map(image, block_px=96)
    assert whole.max() >= 10
    matched = 0
    for label in range(1, whole.max() + 1):
        mask = whole == label
        other = np.bincount(blocks[mask]).argmax()
        matched += other > 0 and iou(mask, blocks == other) >= 0.9
    assert matched >= 0.95 * whole.max()
    assert abs(int(blocks.max()) - int(whole.max())) <= 0.05 * whole.max()


def test_python_api(tiny_ckpt, segmenter):
    import dsb

    image, _ = fluo(5)
    gray = image[..., 0]
    labels = dsb.segment(gray, tiny_ckpt, device="cpu")
    assert labels.shape == gray.shape and labels.dtype == np.int32 and labels.max() > 0
    from dsb.segmentation import segment

    assert dsb.segment is segment and np.array_equal(segment(gray, segmenter=segmenter), labels)
    channel_first = np.stack([np.zeros_like(gray), gray])
    assert np.array_equal(dsb.segment(channel_first, segmenter=segmenter, channel=2), labels)
    # a fixed nucleus diameter sets the scale: target diameter / diameter
    assert segmenter.scale_for_diameter(segmenter.target_diameter_px / 2) == pytest.approx(2.0)
    with pytest.raises(DsbError, match="positive"):
        segmenter.scale_for_diameter(0)


def _make_inputs(root: Path) -> dict[str, tuple[int, int]]:
    """A folder of every input kind; returns output name -> (H, W)."""
    shapes = {}
    image, _ = fluo(10, (96, 120))
    write_png(root / "plain.png", image)
    shapes["plain"] = (96, 120)
    image, _ = fluo(11, (80, 100))
    (root / "deep").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "deep" / "twelve.tif", image[..., 0].astype(np.uint16) * 16)  # 12-bit data
    shapes["deep/twelve"] = (80, 100)
    image, _ = fluo(12, (64, 90))
    two = np.stack([np.full(image.shape[:2], 7, np.uint8), image[..., 0]])
    tifffile.imwrite(root / "deep" / "two_channels.tif", two, imagej=True, metadata={"axes": "CYX"})
    shapes["deep/two_channels"] = (64, 90)
    image, _ = make_sample(13, kind="brightfield", shape=(72, 88))
    Image.fromarray(image).save(root / "bright.jpg", quality=95)
    shapes["bright"] = (72, 88)
    return shapes


def test_cli_end_to_end_rerun_and_failures(tmp_path, tiny_ckpt):
    import roifile
    import shapely.geometry

    data = tmp_path / "data"
    shapes = _make_inputs(data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    args = ["segment", str(data), "--out", str(out), "-k", str(tiny_ckpt), "--channel", "2",
            "--rois", "imagej", "--rois", "geojson", "--overlays"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output  # one image failed, the others are done
    assert "broken.png" in res.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary.set_index("image").loc["broken", "status"] == "failed"
    assert "broken.png" in summary.set_index("image").loc["broken", "error"]
    nuclei = pd.read_csv(out / "nuclei.csv")
    for name, shape in shapes.items():
        labels = read_label_image(out / f"{name}_labels.tif")
        assert labels.shape == shape, name
        n = int(labels.max())
        assert n > 0, name
        rows = nuclei[nuclei["image"] == name]
        assert sorted(rows["label"]) == list(range(1, n + 1))
        assert np.array_equal(rows.sort_values("label")["area_px"], np.bincount(labels.ravel())[1:])
        assert summary.set_index("image").loc[name, "n_nuclei"] == n
        rois = roifile.roiread(out / f"{name}_rois.zip")
        assert len(rois) == n
        for index, roi in enumerate(rois, start=1):
            assert iou(rasterise(roi.coordinates(), shape), labels == index) >= 0.9
        features = json.loads((out / f"{name}.geojson").read_text())["features"]
        assert len(features) == n and all(shapely.geometry.shape(f["geometry"]).is_valid for f in features)
        assert Image.open(out / f"{name}_overlay.png").size == shape[::-1]
    assert "mean_intensity_ch2" in nuclei.columns  # the two-channel image, both channels measured
    assert not list(out.rglob("*.tmp"))

    # A rerun skips what is done (the model never runs) and gives the same tables.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.tif")}
    (data / "broken.png").unlink()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.tif")} == before
    again = pd.read_csv(out / "summary.csv")
    assert set(again["status"]) == {"skipped"}
    assert again["seconds"].notna().all()  # kept from the run that segmented them
    pd.testing.assert_frame_equal(pd.read_csv(out / "nuclei.csv"), nuclei)
    res = runner.invoke(app, [*args, "--overwrite", "--format", "png", "--nucleus-diameter", "13.8"])
    assert res.exit_code == 0, res.output
    final = pd.read_csv(out / "summary.csv").set_index("image")
    assert set(final["status"]) == {"segmented"}
    target = 2 * np.sqrt(600 / np.pi)  # the model names no area: 600 px
    assert final["scale"].to_numpy() == pytest.approx(target / 13.8)
    assert read_label_image(out / "plain_labels.png").shape == shapes["plain"]


def test_cli_refuses_bad_options(tmp_path, tiny_ckpt):
    image, _ = fluo(0, (32, 40))
    write_png(tmp_path / "a.png", image)
    for extra, message in ((["--format", "jpg"], "--format"), (["--rois", "svg"], "--rois"),
                           (["--channel", "0"], "count from 1"), (["--nucleus-diameter", "-3"], "positive")):
        res = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                                  "-k", str(tiny_ckpt), *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
    res = runner.invoke(app, ["segment", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "-k", str(tiny_ckpt)])
    assert res.exit_code == 2 and "missing: no such file or folder" in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow  # torchrun starts two fresh processes
def test_two_processes_equal_one(tmp_path, tiny_ckpt):
    data = tmp_path / "data"
    _make_inputs(data)
    for seed in (20, 21):
        write_png(data / f"extra{seed}.png", fluo(seed, (70, 80))[0])
    common = [str(data), "-k", str(tiny_ckpt), "--channel", "2", "--rois", "geojson"]
    res = runner.invoke(app, ["segment", *common, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cli.main",
         "segment", *common, "--out", str(tmp_path / "two"), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".tif":
            assert np.array_equal(read_label_image(one / rel), read_label_image(two / rel)), rel
        elif rel.suffix == ".geojson":
            assert (one / rel).read_text() == (two / rel).read_text(), rel
    pd.testing.assert_frame_equal(pd.read_csv(one / "nuclei.csv"), pd.read_csv(two / "nuclei.csv"))
    s1, s2 = pd.read_csv(one / "summary.csv"), pd.read_csv(two / "summary.csv")
    pd.testing.assert_frame_equal(s1.drop(columns="seconds"), s2.drop(columns="seconds"))


@pytest.mark.slow
@pytest.mark.realdata
def test_same_instances_as_dsb_predict_on_stage1_test(real_data, tmp_path):
    """dsb segment on three stage-1 test images (a Kaggle stage and plain PNGs) gives the
    very label maps of dsb predict (shipped weights, no TTA, rescaling as shipped)."""
    from dsb.data.kaggle import open_stage, read_rle_csv

    stage = open_stage(real_data / "stage1_test.zip", labels=None)
    ids = stage.image_ids[:3]
    mini = tmp_path / "stage"
    with zipfile.ZipFile(real_data / "stage1_test.zip") as zf:
        for image_id in ids:
            member = [n for n in zf.namelist() if n.endswith(f"{image_id}/images/{image_id}.png")][0]
            target = mini / image_id / "images" / f"{image_id}.png"
            target.parent.mkdir(parents=True)
            target.write_bytes(zf.read(member))
    sub = tmp_path / "sub.csv"
    res = runner.invoke(app, ["predict", "-k", DEFAULT_CHECKPOINT, "--input", str(mini), "--out", str(sub),
                              "--tta", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["segment", str(mini), "--out", str(tmp_path / "seg"), "--tta", "none", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    table = read_rle_csv(sub)
    for image_id in ids:
        ours = read_label_image(tmp_path / "seg" / f"{image_id}_labels.tif")
        theirs = table.label_map(image_id, ours.shape)
        assert ours.max() > 0
        assert np.array_equal(ours, theirs), image_id
