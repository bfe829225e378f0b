"""Reading files: every failure names the file and what to do; images are read as a viewer shows them."""

import io as bytes_io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cftlib.core import io
from cftlib.data import world


def test_remedy_names_the_stage_that_writes_a_path():
    assert io.remedy("/x/data/world/train.npz") == ("restore it from the DVC cache (`dvc checkout /x/data/world`) or "
                                                    "re-run its stage (`dvc repro -f world`)")
    assert "`dvc repro -f finetune`" in io.remedy("models/finetune/vit/cft/seed0/best.pt")
    assert "`make pretrain`" in io.remedy("models/pretrain/vit.pt")
    assert io.remedy("/tmp/elsewhere.json", "masks") == "re-run the masks stage (`dvc repro -f masks`)"
    assert io.remedy("/tmp/elsewhere.json") == io.RERUN


@pytest.mark.parametrize("content, what", [(b'{"a": [1, 2', r"not valid JSON \(line 1, column 12"),
                                           (b'{"a": "\xff"}', r"not UTF-8 text \(byte 7\)")])
def test_a_truncated_or_non_utf8_json_file_is_named(tmp_path, content, what):
    path = tmp_path / "data" / "masks" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(path))}: {what}.*`dvc repro -f masks`"):
        io.read_json(path)


def _world_split(tmp_path):
    """A one-split world folder as world.generate writes it: the .npz and its manifest with the SHA-256."""
    folder = tmp_path / "data" / "world"
    folder.mkdir(parents=True)
    world.save_npz(folder / "test.npz", {"images": np.arange(3000, dtype=np.uint8).reshape(10, 10, 10, 3),
                                          "label": np.arange(10)})
    io.write_json(folder / "test.json", {"split": "test", "sha256": io.sha256(folder / "test.npz")})
    return folder


def test_world_split_round_trips_and_a_damaged_one_says_how_to_restore_it(tmp_path):
    folder = _world_split(tmp_path)
    assert world.load_split(folder, "test")["label"].tolist() == list(range(10))
    data = bytearray((folder / "test.npz").read_bytes())
    data[200] ^= 0xFF  # a flipped byte of the same size: DVC's size and mtime look the same
    (folder / "test.npz").write_bytes(bytes(data))
    fix = re.escape(f"`dvc checkout {folder}`) or re-run its stage (`dvc repro -f world`)")
    with pytest.raises(io.CorruptFile, match=f"test.npz: its SHA-256 is not the one its manifest recorded.*{fix}"):
        world.load_split(folder, "test")
    (folder / "test.npz").write_bytes(bytes(data[:100]))  # truncated, and no manifest to compare with
    (folder / "test.json").unlink()
    with pytest.raises(io.CorruptFile, match=f"test.npz: damaged or truncated \\(BadZipFile.*{fix}"):
        world.load_split(folder, "test")


def test_an_npz_with_a_bad_crc_is_named(tmp_path):
    path = tmp_path / "m.npz"
    world.save_npz(path, {"a": np.zeros(5000, np.uint8)})
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the compressed member: zipfile's CRC check or zlib fails on reading
    path.write_bytes(bytes(data))
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(path))}: damaged or truncated"):
        io.read_npz(path, fix="regenerate it")


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_checkpoint_with_code_is_refused_without_advice_to_allow_it(tmp_path):
    path = tmp_path / "models" / "base" / "vit" / "seed0.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "config": _Code()}, path)
    with pytest.raises(io.CorruptFile) as err:
        io.read_torch(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused: it holds objects other than tensors") and "posix.getcwd" in msg
    assert "weights_only" not in msg and "will likely succeed" not in msg and "`dvc repro -f world`" in msg
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(path))}: damaged or truncated \\(RuntimeError"):
        io.read_torch(path)


# ----------------------------------------------------------------------------- images

def _save(path, image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def test_16_bit_grey_is_scaled_not_clipped_to_white(tmp_path):
    grey = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    path = _save(tmp_path / "g.png", Image.fromarray(grey))
    assert np.asarray(Image.open(path).convert("RGB")).mean() > 254  # what PIL alone gives: all but 0 clipped
    rgb = np.asarray(io.read_image(path))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and abs(rgb.mean() - 127.5) < 1


def test_palette_image_with_transparency_keeps_its_colours(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    path = _save(tmp_path / "p.png", pal, transparency=3)
    assert np.array_equal(np.asarray(io.read_image(path)), np.asarray(pal.convert("RGBA").convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = _save(tmp_path / "e.jpg", im, exif=exif)
    assert Image.open(path).size == (40, 20) and io.read_image(path).size == (20, 40)


def test_truncated_unreadable_and_tiny_images_are_refused_by_name(tmp_path):
    buf = bytes_io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[:600])
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(cut))}: damaged or truncated image.*remove it"):
        io.read_image(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(junk))}: not an image PIL can read"):
        io.read_image(junk)
    dot = _save(tmp_path / "dot.png", Image.new("RGB", (1, 1)))
    with pytest.raises(io.CorruptFile, match=f"^{re.escape(str(dot))}: 1×1 px; images need at least 8 px a side"):
        io.read_image(dot)


def test_hidden_files_are_not_images(tmp_path):
    for name in ("a.jpg", "._a.jpg", ".DS_Store", "b.PNG", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    assert [p.name for p in io.list_images(tmp_path)] == ["a.jpg", "b.PNG"]


def test_class_folders_are_the_sorted_visible_subfolders(tmp_path):
    for name in ("b", "a", ".hidden", "a/deeper"):
        (tmp_path / name).mkdir()
    (tmp_path / "c.jpg").write_bytes(b"x")
    assert io.list_folders(tmp_path) == [tmp_path / "a", tmp_path / "b"]


def test_cache_keys_keep_their_hash_strings():
    """Run configs, grounding inputs, benchmark caches and concept bank names are named by these hashes: a
    change to them would re-run every finished run (the strings were computed before the helpers were shared)."""
    obj = {"b": 1, "a": [1.5, "x", None], "é": {"z": 2, "y": "ü"}}
    assert io.json_sha256(obj) == "16993ff2c6094759481ed48e082c2bad44088e23efa4a5bc1903356c8c988970"
    assert io.json_sha256([obj, Path("p")], default=str)[:12] == "26983325c26b"
    assert io.json_sha256(obj, separators=(",", ":"), ensure_ascii=False)[:12] == "ccc8ee84a252"
    w = torch.nn.Linear(3, 2)
    with torch.no_grad():
        w.weight.copy_(torch.arange(6.0).view(2, 3) / 7)
        w.bias.copy_(torch.tensor([-1.0, 2.5]))
    assert io.tensors_sha256(*w.state_dict().values()) == (
        "a23611263956c1e40cce0b84aa22c2e5221251048c3e607854806ac84557ba38")
    assert io.tensors_sha256(*w.state_dict().values(), torch.tensor([1, 2, 3]))[:16] == "794dcbf7a11ca073"
    assert io.tensors_sha256(w.weight) == io.tensors_sha256(w.weight.detach().clone())  # a Parameter: its values


def test_nan_becomes_none_for_json():
    values = (float("nan"), np.float64("nan"), 0.5, None, "x")
    assert [io.nan_to_none(v) for v in values] == [None, None, 0.5, None, "x"]


def test_write_json_round_trip(tmp_path):
    io.write_json(tmp_path / "x.json", {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "x.json").read_text()) == io.read_json(tmp_path / "x.json") == {"a": [1.5], "b": 1}
