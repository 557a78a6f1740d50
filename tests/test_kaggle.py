"""Kaggle stage reading (folder and zip), RLE CSVs, and the errors users meet."""

from __future__ import annotations

import gzip
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsb.data.kaggle import DataWarning, open_stage, read_rle_csv, stage_summary
from dsb.data.synthetic import generate_samples, write_synthetic_dataset
from dsb.errors import DataError
from dsb.rle import rle_encode

SEED = 7
N = 4  # KIND_CYCLE gives fluorescence, stained, fluorescence, brightfield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("kaggle") / "stage", n=N, seed=SEED)


@pytest.fixture(scope="module")
def samples():
    return {s.image_id: s for s in generate_samples(N, SEED)}


def zip_folder(folder: Path, out: Path, top: str | None = None) -> Path:
    """Zip a stage folder (deflated), its ids at the root or under ``top/``."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            if top:
                name = f"{top}/{name}"
            zf.write(path, name)
    return out


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def make_stage(root: Path, images: dict[str, np.ndarray], masks: dict[str, list[np.ndarray]] = {}) -> Path:
    """A hand-made stage folder: ``images[id]`` and optional binary ``masks[id]``."""
    for image_id, image in images.items():
        save_png(root / image_id / "images" / f"{image_id}.png", image)
        for k, mask in enumerate(masks.get(image_id, [])):
            save_png(root / image_id / "masks" / f"{k}.png", mask.astype(np.uint8) * 255)
    return root


def canonical(label_map: np.ndarray) -> np.ndarray:
    """Relabel instances by their first pixel in raster order (compare up to numbering)."""
    labels, first = np.unique(label_map.ravel(), return_index=True)
    order = labels[np.argsort(first)]
    order = order[order > 0]
    remap = np.zeros(int(label_map.max()) + 1, np.int32)
    remap[order] = np.arange(1, len(order) + 1)
    return remap[label_map]


# ----------------------------------------------------------------------------- layouts


def test_folder_and_zips_give_the_same_stage(dataset, samples, tmp_path):
    flat = zip_folder(dataset.path, tmp_path / "flat.zip")
    nested = zip_folder(dataset.path, tmp_path / "nested.zip", top="stage1_train")
    stages = [open_stage(p) for p in (dataset.path, flat, nested)]
    assert stages[0].image_ids == sorted(samples)
    for stage in stages:
        assert stage.image_ids == stages[0].image_ids and len(stage) == N
        assert stage.has_labels and stage.labelled_ids == stage.image_ids
    for image_id in stages[0].image_ids:
        expected = samples[image_id]
        for stage in stages:
            assert stage.image_shape(image_id) == expected.label_map.shape
            np.testing.assert_array_equal(stage.read_image_uint8(image_id), expected.image)
            np.testing.assert_array_equal(stage.read_label_map(image_id), expected.label_map)
    some = stages[0].image_ids[0]
    assert stages[2].describe(some) == f"{nested}:stage1_train/{some}/images/{some}.png"
    assert stages[1].describe(some) == f"{flat}:{some}/images/{some}.png"
    assert stages[0].describe(some) == str(dataset.path / some / "images" / f"{some}.png")


def test_nested_folder_is_found(dataset, tmp_path):
    shutil.copytree(dataset.path, tmp_path / "outer" / "stage1_train")
    assert open_stage(tmp_path / "outer").image_ids == open_stage(dataset.path).image_ids


def test_zip_stage_survives_pickling(dataset, tmp_path):
    """DataLoader workers get a pickled stage: the zip handle is reopened, not shared."""
    stage = open_stage(zip_folder(dataset.path, tmp_path / "s.zip"))
    image_id = stage.image_ids[1]
    copy = pickle.loads(pickle.dumps(stage))
    np.testing.assert_array_equal(copy.read_image(image_id), stage.read_image(image_id))
    stage.close()
    assert stage.read_image(image_id).shape[-1] == 3  # reopens after close


def test_image_types_and_summary(dataset):
    stage = open_stage(dataset.path, labels=dataset.solution_csv)
    assert {i: stage.image_type(i) for i in stage.image_ids} == dataset.kinds
    summary = stage_summary(stage)
    assert summary["n_images"] == summary["n_labelled"] == N
    assert summary["modes"] == {"RGBA": 3, "RGB": 1}  # stained is stored as RGB
    assert summary["nuclei_per_image"]["total"] == sum(dataset.n_nuclei.values())
    assert summary["image_types"] == {"fluorescence": 2, "stained": 1, "brightfield": 1}
    assert summary["usage"] == {"Public": 2, "Private": 2}
    assert sum(row["count"] for row in summary["sizes"]) == N


# ----------------------------------------------------------------------------- images


def test_image_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    root = make_stage(tmp_path, {"rgb": rgb, "gray": gray})
    save_png(root / "rgba" / "images" / "rgba.png", rgb, "RGBA")
    save_png(root / "gray16" / "images" / "gray16.png", gray16)
    save_png(root / "graya" / "images" / "graya.png", gray, "LA")
    save_png(root / "pal" / "images" / "pal.png", rgb, "P")
    stage = open_stage(root)
    assert stage.image_mode("gray16").startswith("I")
    for image_id in stage.image_ids:
        image = stage.read_image(image_id)
        assert image.dtype == np.float32 and image.shape == (5, 7, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert stage.read_image_uint8(image_id).dtype == np.uint8
    for image_id in ("rgb", "rgba"):  # alpha dropped, /255
        np.testing.assert_array_equal(stage.read_image(image_id), rgb.astype(np.float32) / 255)
    for image_id in ("gray", "graya"):  # gray replicated to 3 channels
        np.testing.assert_array_equal(stage.read_image(image_id), np.repeat(gray[..., None], 3, -1) / np.float32(255))
    np.testing.assert_array_equal(stage.read_image("gray16")[..., 1], gray16.astype(np.float32) / 65535)
    np.testing.assert_array_equal(stage.read_image_uint8("gray16")[..., 2], np.round(gray16 / 257).astype(np.uint8))
    palette = Image.fromarray(rgb).convert("P").convert("RGB")
    np.testing.assert_array_equal(stage.read_image_uint8("pal"), np.asarray(palette))


def test_image_shape_reads_only_the_header(tmp_path):
    root = make_stage(tmp_path, {"a": np.zeros((30, 40, 3), np.uint8)})
    png = root / "a" / "images" / "a.png"
    png.write_bytes(png.read_bytes()[:60])  # header intact, pixel data cut off
    stage = open_stage(root)
    assert stage.image_shape("a") == (30, 40)
    with pytest.raises(DataError, match=r"a\.png: not a readable PNG"):
        stage.read_image("a")


# ----------------------------------------------------------------------------- labels


def test_masks_and_solution_csv_agree(dataset, samples):
    from_masks = open_stage(dataset.path)
    from_csv = open_stage(dataset.path, labels=dataset.solution_csv)
    assert from_csv.labelled_ids == from_masks.labelled_ids
    for image_id in from_masks.image_ids:
        expected = samples[image_id].label_map
        for stage in (from_masks, from_csv):
            label_map = stage.read_label_map(image_id)
            assert label_map.dtype == np.int32
            np.testing.assert_array_equal(label_map, expected)
        assert from_csv.n_instances(image_id) == from_masks.n_instances(image_id) == expected.max()


def overlap_stage(root: Path) -> Path:
    masks = np.zeros((3, 6, 6), bool)
    masks[0, 1:4, 1:4] = True  # 9 px
    masks[1, 3:5, 3:5] = True  # shares (3, 3) with mask 0
    masks[2, 0, 5] = True
    return make_stage(root, {"img1": np.zeros((6, 6), np.uint8)}, {"img1": list(masks)})


def test_overlapping_masks_keep_the_first_and_warn(tmp_path):
    stage = open_stage(overlap_stage(tmp_path))
    with pytest.warns(DataWarning, match=r"^img1: 1 pixels claimed by more than one mask; kept the first$"):
        label_map = stage.read_label_map("img1")
    assert label_map[3, 3] == 1 and label_map[4, 4] == 2 and label_map[0, 5] == 3
    assert np.bincount(label_map.ravel()).tolist() == [36 - 9 - 3 - 1, 9, 3, 1]


def test_overlap_in_csv_warns_too(tmp_path):
    (tmp_path / "l.csv").write_text("ImageId,EncodedPixels\nx,1 4\nx,3 4\nx,\n")
    table = read_rle_csv(tmp_path / "l.csv")
    with pytest.warns(DataWarning, match="^x: 2 pixels claimed"):
        label_map = table.label_map("x", (3, 3))
    assert label_map.T.ravel().tolist() == [1, 1, 1, 1, 2, 2, 0, 0, 0]


def test_hidden_instance_is_renumbered_and_empty_mask_skipped(tmp_path):
    big = np.zeros((6, 6), bool)
    big[1:5, 1:5] = True
    inside = np.zeros((6, 6), bool)
    inside[2, 2] = True
    corner = np.zeros((6, 6), bool)
    corner[0, 0] = True
    root = make_stage(tmp_path, {"i": np.zeros((6, 6), np.uint8)}, {"i": [big, np.zeros((6, 6), bool), inside, corner]})
    with pytest.warns(DataWarning) as record:
        label_map = open_stage(root).read_label_map("i")
    messages = [str(w.message) for w in record]
    assert any("masks/1.png is empty; skipped" in m for m in messages)
    assert any(m.startswith("i: 1 pixels claimed") for m in messages)
    assert sorted(np.unique(label_map).tolist()) == [0, 1, 2] and label_map[0, 0] == 2


def test_stage_without_labels(dataset, tmp_path):
    images_only = write_synthetic_dataset(tmp_path / "test", n=2, seed=1, masks=False)
    for stage in (open_stage(images_only.path), open_stage(dataset.path, labels=None)):
        assert not stage.has_labels and stage.labelled_ids == []
        with pytest.raises(DataError, match="has no labels"):
            stage.read_label_map(stage.image_ids[0])
    # The solution written beside a test-like stage still labels it.
    stage = open_stage(images_only.path, labels=images_only.solution_csv)
    assert stage.has_labels and stage.read_label_map(stage.image_ids[0]).max() > 0


def test_labels_csv_covering_part_of_the_stage(dataset, tmp_path):
    rows = dataset.solution_csv.read_text().splitlines()
    dropped = dataset.image_ids[0]
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join(r for r in rows if not r.startswith(dropped)) + "\n")
    stage = open_stage(dataset.path, labels=partial)
    assert dropped not in stage.labelled_ids and len(stage.labelled_ids) == N - 1
    assert dropped in stage.image_ids
    with pytest.raises(DataError, match=f"partial.csv has no rows for image {dropped}"):
        stage.read_label_map(dropped)


def test_labels_csv_with_stray_or_foreign_ids(dataset, tmp_path):
    rows = dataset.solution_csv.read_text()
    stray = tmp_path / "stray.csv"
    stray.write_text(rows + "deadbeef,1 1,10,10,Public\n")
    with pytest.warns(DataWarning, match="1 ImageIds are not in .* \\(e.g. deadbeef\\)"):
        open_stage(dataset.path, labels=stray)
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("ImageId,EncodedPixels\nabc,1 1\n")
    with pytest.raises(DataError, match="shares no ImageId"):
        open_stage(dataset.path, labels=foreign)


# ----------------------------------------------------------------------------- RLE CSV


def test_read_rle_csv(tmp_path):
    path = tmp_path / "solution.csv"
    path.write_text(
        "ImageId,EncodedPixels,Height,Width,Usage\n"
        "b,1 2 5 1,3,2,Private\n"
        "a,,4,4,Ignored\n"
        "b,4 1,3,2,Private\n"
    )
    table = read_rle_csv(path)
    assert table.image_ids == ["b", "a"] and len(table) == 2 and "a" in table
    assert [r.tolist() for r in table.runs("b")] == [[[1, 2], [5, 1]], [[4, 1]]]
    assert table.runs("a") == [] and table.n_instances("a") == 0 and table.n_instances("b") == 2
    assert table.shape("b") == (3, 2) and table.usage("b") == "Private"
    assert table.ignored_ids == {"a"}
    np.testing.assert_array_equal(table.label_map("b"), [[1, 2], [1, 1], [0, 0]])
    assert not table.label_map("a").any() and table.label_map("a").shape == (4, 4)
    with pytest.raises(DataError, match="is 3x2 in the CSV but 4x4"):
        table.label_map("b", (4, 4))
    with pytest.raises(DataError, match="has no rows for image zzz"):
        table.runs("zzz")


def test_read_rle_csv_without_shapes(tmp_path):
    path = tmp_path / "labels.csv"
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    path.write_text(f"ImageId,EncodedPixels\nid1,{rle_encode(mask)}\n")
    table = read_rle_csv(path)
    assert table.shape("id1") is None and table.usage("id1") is None and table.ignored_ids == set()
    np.testing.assert_array_equal(table.label_map("id1", (4, 5)), mask.astype(np.int32))
    with pytest.raises(DataError, match="no Height/Width columns"):
        table.label_map("id1")
    with pytest.raises(DataError, match=r"labels.csv: data row 1 \(line 2\), image id1: a run goes past"):
        table.label_map("id1", (2, 2))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"not a CSV file \(binary data\)"),
        (b"caf\xe9,x\n", r"not a CSV file \(not UTF-8 text\)"),
        (b"ImageId,Pixels\na,1 1\n", r"line 1: the header needs .* missing EncodedPixels"),
        (b"ImageId,EncodedPixels\na,1 1\nb,1 x\n", r"data row 2 \(line 3\), image b: .*'1 x'.*not an integer: 'x'"),
        (b"ImageId,EncodedPixels\na,1 2 3\n", r"data row 1 \(line 2\), image a: .*odd number of values"),
        (b"ImageId,EncodedPixels\na,1 1\n,2 2\n", r"data row 2 \(line 3\): empty ImageId"),
        (b"ImageId,EncodedPixels\na,1 1\nb,1 1,extra,more\n", "not a valid CSV"),
        (b"ImageId,EncodedPixels,Height,Width\na,1 1,10,ten\n", r"data row 1 \(line 2\), image a: Width 'ten'"),
        (b"ImageId,EncodedPixels,Height\na,1 1,10\n", "only one of the Height and Width"),
        (b"ImageId,EncodedPixels,Height,Width\na,1 1,10,10\na,2 1,10,12\n", r"data row 2 \(line 3\): image a has Height/Width 10x12"),
        (b"ImageId,EncodedPixels,Usage\na,1 1,Public\na,2 1,Private\n", "data row 2 .* Usage 'Private'"),
    ],
)
def test_read_rle_csv_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"bad.csv: .*{message}"):
        read_rle_csv(path)


def test_read_rle_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: no such file"):
        read_rle_csv(tmp_path / "nope.csv")


def test_labels_read_what_submissions_read(tmp_path):
    """Quoting, CR line ends, blank lines, gzip and a byte-order mark: labels are read by
    the submissions' reader (dsb.rle.read_rle_rows), rows named by their real line."""
    text = '"ImageId","EncodedPixels","Height","Width"\r"a","1 2 5 3",4,5\r\r"b","",3,3\r'
    plain = tmp_path / "labels.csv"
    plain.write_text(text, newline="")
    gzipped = tmp_path / "labels.csv.gz"
    gzipped.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text.encode()))
    with pytest.warns(DataWarning, match="labels.csv.gz: starts with a UTF-8 byte-order mark"):
        from_gzip = read_rle_csv(gzipped)
    for table in (read_rle_csv(plain), from_gzip):
        assert table.image_ids == ["a", "b"] and table.shape("a") == (4, 5)
        assert [r.tolist() for r in table.runs("a")] == [[[1, 2], [5, 3]]]
    plain.write_text(text.replace('"",3,3', '"9 9",3,3'), newline="")
    with pytest.raises(DataError, match=r"labels.csv: data row 2 \(line 4\), image b: a run goes past"):
        read_rle_csv(plain).label_map("b")


# ----------------------------------------------------------------------------- bad stages


def test_bad_stage_paths(tmp_path):
    with pytest.raises(DataError, match="no such folder or zip"):
        open_stage(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a folder or a zip"):
        open_stage(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Kaggle images found"):
        open_stage(tmp_path / "empty")


def test_missing_image_png_is_named(tmp_path):
    root = make_stage(tmp_path / "s", {"good": np.zeros((4, 4), np.uint8)}, {"good": [np.eye(4, dtype=bool)]})
    save_png(root / "lost" / "masks" / "0.png", np.eye(4, dtype=np.uint8) * 255)
    with pytest.raises(DataError, match="image lost has no images/lost.png"):
        open_stage(root)
    save_png(root / "lost" / "images" / "other.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"image lost has no images/lost.png \(found other.png\)"):
        open_stage(zip_folder(root, tmp_path / "s.zip"))


def test_two_top_folders_in_a_zip(dataset, tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for top in ("a", "b"):
            image_id = dataset.image_ids[0]
            name = f"{image_id}/images/{image_id}.png"
            zf.write(dataset.path / name, f"{top}/{name}")
    with pytest.raises(DataError, match="several folders"):
        open_stage(path)


def test_unreadable_png_and_wrong_mask_size(tmp_path):
    root = make_stage(tmp_path, {"ok": np.zeros((4, 5), np.uint8)}, {"ok": [np.ones((4, 5), bool)]})
    save_png(root / "ok" / "masks" / "1.png", np.zeros((5, 4), np.uint8))
    (root / "junk" / "images").mkdir(parents=True)
    (root / "junk" / "images" / "junk.png").write_bytes(b"not a png at all")
    stage = open_stage(root)
    with pytest.raises(DataError, match=r"junk/images/junk.png: not a readable PNG"):
        stage.read_image("junk")
    with pytest.raises(DataError, match=r"junk/images/junk.png: not a readable PNG"):
        stage.image_shape("junk")
    with pytest.raises(DataError, match=r"ok/masks/1.png: mask is 5x4 but its image is 4x5"):
        stage.read_label_map("ok")
    with pytest.raises(DataError, match="has no image nothere"):
        stage.read_image("nothere")


# ----------------------------------------------------------------------------- real data

OVERLAP_IDS = (  # the 6 images of the fixed labels with 1-2 pixels shared by two masks
    "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9",
    "1609b1b8480ee52652a644403b3f7d5511410a016750aa3b9a4c8ddb3e893e8e",
    "175dbb364bfefc9537931144861c9b6e08934df3992782c669c6fe4234319dfc",
    "547ef286ee5f4e5dce533e982e6992ada67b7d727fdd3cfa6576f24c631a7ae6",
    "72e8c49dea44787114fd191f9e97e260f961c6e7ae4715bc95cc91db8d91a4e3",
    "f26f4c2c70c38fe12e00d5a814d5116691f2ca548908126923fd76ddd665ed24",
)


@pytest.mark.realdata
def test_real_stage1_train(real_data):
    train = real_data / "stage1_train.zip"
    stage = open_stage(train)
    assert len(stage) == 670 and stage.has_labels
    image_id = "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552"
    assert stage.n_instances(image_id) == 27
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        from_masks = stage.read_label_map(image_id)
        from_csv = open_stage(train, labels=real_data / "stage1_train_labels.csv").read_label_map(image_id)
    assert from_masks.shape == stage.image_shape(image_id) == (256, 256) and from_masks.max() == 27
    # The CSV lists the masks in another order than their file names: same instances.
    np.testing.assert_array_equal(canonical(from_masks), canonical(from_csv))

    fixed = open_stage(train, labels=real_data / "stage1_train_labels_fixed.csv")
    assert len(fixed.labelled_ids) == 664 and len(fixed) == 670
    dropped = sorted(set(fixed.image_ids) - set(fixed.labelled_ids))
    with pytest.raises(DataError, match=f"no rows for image {dropped[0]}"):
        fixed.read_label_map(dropped[0])
    for overlap_id in OVERLAP_IDS[:2]:
        with pytest.warns(DataWarning, match=f"^{overlap_id}: [12] pixels claimed by more than one mask"):
            fixed.read_label_map(overlap_id)
