"""A corpus of bad input: each kind of mistake a user can hand fgir (images, split files, configs,
checkpoints, web uploads), written into a folder, with what fgir must answer.

`expected` is one of
- "error": exit status 2 and one short message naming `culprit` (and `reason`, when given);
- "skip": an image that cannot be read: an error as above under data.on_error=fail, a counted skip
  under data.on_error=skip (predict: named on its own line, the others predicted, exit status 1);
- "ok": unusual but valid input that must work.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import TINY, save_random_vit

CLASSES = ("alpha", "beta", "gamma")
GOOD_PER_CLASS = 4
IMAGE_SIZE = 40
# Over data.max_image_pixels (40 MP) but under Pillow's own 89 MP warning; the other one is over
# Pillow's 179 MP error. Both are a header only: a few dozen bytes on disk.
OVER_LIMIT_SIDE, OVER_PILLOW_SIDE = 8000, 20000
OVERSIZE_UPLOAD_BYTES = 11 * 2**20  # over the demo's 10 MB, sparse on disk


@dataclass(frozen=True)
class BadInput:
    kind: str
    verbs: tuple[str, ...]
    path: Path  # the file (or folder) the kind is about
    expected: str  # error | skip | ok
    culprit: str = ""  # what the message must name
    args: tuple[str, ...] = ()  # the config overrides (or file) that bring the kind in
    reason: str = ""  # a second thing the message must say, where the culprit alone is not enough

    def __str__(self) -> str:
        return self.kind


def noise_image(seed: int, size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE), mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "CMYK": 4, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` RGB pixels and holds none (a decompression bomb's header)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def png_with_bad_crc() -> bytes:
    data = bytearray(encoded(noise_image(1), "PNG"))
    data[29:33] = bytes(b ^ 0xFF for b in data[29:33])  # the IHDR chunk's CRC
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    return encoded(noise_image(2, (IMAGE_SIZE + 8, IMAGE_SIZE)), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [noise_image(seed).convert("P") for seed in (3, 4, 5)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png_with_transparency() -> bytes:
    image = noise_image(6).convert("P")
    return encoded(image, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    pixels = np.random.default_rng(7).integers(0, 65536, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint16)
    return encoded(Image.fromarray(pixels), "PNG")


def mpo_jpeg() -> bytes:
    """What many phone cameras write: a JPEG followed by a second picture."""
    return encoded(noise_image(8), "MPO", save_all=True, append_images=[noise_image(9)])


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name, file name, what to write (bytes, or a callable that makes the entry at a path), expected.
def _image_entries() -> list[tuple[str, str, object, str]]:
    jpeg = encoded(noise_image(10), "JPEG")
    return [
        ("truncated JPEG", "truncated.jpg", half(jpeg), "skip"),
        ("truncated PNG", "truncated.png", half(encoded(noise_image(11), "PNG")), "skip"),
        ("zero-byte file", "empty.jpg", b"", "skip"),
        ("PNG with a bad CRC", "bad_crc.png", png_with_bad_crc(), "skip"),
        ("text file named .jpg", "notes.jpg", b"these are my notes, not a picture\n", "skip"),
        ("JPEG bytes garbled after the header", "garbled.jpg", jpeg[:200] + os.urandom(len(jpeg) - 200), "skip"),
        ("image over data.max_image_pixels", "bomb.png", png_header_only(OVER_LIMIT_SIDE, OVER_LIMIT_SIDE), "skip"),
        ("image over Pillow's bomb limit", "huge_bomb.png", png_header_only(OVER_PILLOW_SIDE, OVER_PILLOW_SIDE),
         "skip"),
        ("HEIC (a format Pillow cannot read)", "photo.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" +
         bytes(64), "skip"),
        ("directory named x.jpg", "folder.jpg", lambda path: path.mkdir(), "skip"),
        ("broken symlink", "dangling.jpg", lambda path: path.symlink_to(path.with_name("gone.jpg")), "skip"),
        ("symlink loop", "loop.jpg", _symlink_loop, "skip"),
        ("listed file that does not exist", "missing.jpg", lambda path: None, "skip"),
        ("unreadable file (permissions)", "locked.jpg", _locked_file, "skip"),
        ("1x1 image", "one_pixel.png", encoded(noise_image(12, (1, 1)), "PNG"), "ok"),
        ("16-bit PNG", "sixteen_bit.png", sixteen_bit_png(), "ok"),
        ("CMYK JPEG", "cmyk.jpg", encoded(noise_image(13, mode="CMYK"), "JPEG"), "ok"),
        ("palette PNG with transparency", "palette.png", palette_png_with_transparency(), "ok"),
        ("RGBA PNG", "rgba.png", encoded(noise_image(14, mode="RGBA"), "PNG"), "ok"),
        ("animated GIF", "animated.gif", animated_gif(), "ok"),
        ("EXIF-rotated JPEG", "rotated.jpg", exif_rotated_jpeg(), "ok"),
        ("MPO JPEG (phone camera)", "phone.jpg", mpo_jpeg(), "ok"),
        ("PNG content named .jpg", "png_inside.jpg", encoded(noise_image(15), "PNG"), "ok"),
    ]


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop_other.link")  # no image extension: a folder scan meets the loop once
    path.symlink_to(other)
    other.symlink_to(path)


def _locked_file(path: Path) -> None:
    path.write_bytes(encoded(noise_image(16), "JPEG"))
    path.chmod(0)


IMAGE_VERBS = ("data check", "train", "eval", "predict", "explain", "serve")


def write_images(folder: Path) -> list[BadInput]:
    """Every image kind as a file (or entry) in `folder`; `culprit` is its path. A root user reads
    any file, so the permissions kind is left out there."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = []
    for kind, name, content, expected in _image_entries():
        if name == "locked.jpg" and os.geteuid() == 0:
            continue
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
        kinds.append(BadInput(kind, IMAGE_VERBS, path, expected, culprit=str(path)))
    return kinds


def write_dataset(root: Path, per_class: int = GOOD_PER_CLASS) -> Path:
    """A small csv-format dataset in `root`: images/<class>/<split>_<n>.png, train/val/test.csv with
    `per_class` good images per class (one for val), and classid_classname.csv."""
    rows = {split: [] for split in ("train", "val", "test")}
    for label, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for order, (split, count) in enumerate((("train", per_class), ("val", 1), ("test", per_class))):
            for index in range(count):
                relative = f"images/{name}/{split}_{index}.png"
                noise_image(1000 + 100 * label + 10 * order + index).save(root / relative)
                rows[split].append(f"{label},{relative}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("class_id,dir\n" + "\n".join(lines) + "\n")
    (root / "classid_classname.csv").write_text(
        "class_id,class_name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(CLASSES)))
    return root


def write_split(root: Path, name: str, images: list[BadInput], batch_size: int) -> str:
    """A split file `name` in the dataset at `root`: its good train rows, then `images` (inside
    root, labelled by turns), then good filler images up to a multiple of `batch_size`, so that
    no image falls in a dropped remainder. Returns `name`."""
    lines = (root / "train.csv").read_text().splitlines()
    lines += [f"{index % len(CLASSES)},{os.path.relpath(image.path, root)}" for index, image in enumerate(images)]
    (root / "images" / "filler").mkdir(exist_ok=True)
    for index in range(-(len(lines) - 1) % batch_size):
        relative = f"images/filler/{name}_{index}.png"
        noise_image(5000 + index).save(root / relative)
        lines.append(f"{index % len(CLASSES)},{relative}")
    (root / name).write_text("\n".join(lines) + "\n")
    return name


# Split files: name, which file, its text (None: the file is not written), the 1-based line the
# message must name (None: the file as a whole), extra overrides, expected, reason.
GOOD_ROW = "0,images/alpha/train_0.png"


def _split_entries() -> list[tuple[str, str, bytes | None, int | None, tuple[str, ...], str, str]]:
    header = "class_id,dir\n"
    good = f"{header}{GOOD_ROW}\n1,images/beta/train_0.png\n"
    return [
        ("missing column", "test.csv", b"class_id\n0\n", 1, (), "error", "missing dir"),
        ("extra field in a row", "test.csv", f"{good}2,images/gamma/train_0.png,extra\n".encode(), 4, (), "error", ""),
        ("label out of range", "test.csv", f"{good}3,images/gamma/train_0.png\n".encode(), 4, (), "error", "got 3"),
        ("negative label", "test.csv", f"{good}-1,images/gamma/train_0.png\n".encode(), 4, (), "error", "got -1"),
        ("non-integer label", "test.csv", f"{good}bird,images/gamma/train_0.png\n".encode(), 4, (), "error", "'bird'"),
        ("duplicate rows", "test.csv", f"{good}{GOOD_ROW}\n".encode(), 4, (), "error", "duplicate"),
        ("absolute path outside the root", "test.csv", f"{good}0,/etc/passwd\n".encode(), 4, (), "error", ""),
        ("../ path outside the root", "test.csv", f"{good}0,../../etc/passwd\n".encode(), 4, (), "error", ""),
        ("empty image path", "test.csv", f"{good}0,\n".encode(), 4, (), "error", ""),
        ("empty CSV (0 bytes)", "test.csv", b"", None, (), "error", "empty"),
        ("header only", "test.csv", header.encode(), None, (), "error", "no rows"),
        ("non-UTF-8 CSV", "test.csv", f"{good}0,images/caf\xe9.png\n".encode("latin-1"), 4, (), "error", "UTF-8"),
        ("unterminated quote", "test.csv", f'{good}0,"images/alpha/train_0.png\n'.encode(), None, (), "error", ""),
        ("box with x1 < x0", "test.csv", b"class_id,dir,x0,y0,x1,y1\n0,images/alpha/train_0.png,9,1,3,5\n", 2, (),
         "error", "x1 > x0"),
        ("split file that does not exist", "test.csv", None, None, (), "error", "not found"),
        ("class_names with too few names", "classid_classname.csv", b"class_id,class_name\n0,alpha\n1,beta\n",
         None, ("data.num_classes=3",), "error", "2 classes"),
        ("class_names with a gap in the ids", "classid_classname.csv", b"0,alpha\n2,gamma\n", None, (), "error",
         "no gaps"),
        ("Windows line endings", "test.csv", good.replace("\n", "\r\n").encode(), None, (), "ok", ""),
        ("UTF-8 BOM (Excel)", "test.csv", b"\xef\xbb\xbf" + good.encode(), None, (), "ok", ""),
    ]


SPLIT_VERBS = ("data check", "train", "eval")


def write_splits(folder: Path, images: Path) -> list[BadInput]:
    """Each split-file kind as a dataset root of its own under `folder` (split and class-name
    files; the images are the good ones of the dataset whose root is `images`). `args` point
    data.root at it; `culprit` is the file, with `:line` where a row is to blame."""
    kinds = []
    for index, (kind, name, text, line, extra, expected, reason) in enumerate(_split_entries()):
        root = folder / f"split{index:02d}"
        root.mkdir(parents=True)
        for file in ("train.csv", "val.csv", "test.csv", "classid_classname.csv"):
            (root / file).write_bytes((images / file).read_bytes())
        target = root / name
        target.unlink()
        if text is not None:
            target.write_bytes(text)
        culprit = f"{target}:{line}" if line is not None else str(target)
        args = (f"data.root={root}", f"data.image_dir={images}", "data.class_names=classid_classname.csv", *extra)
        kinds.append(BadInput(kind, SPLIT_VERBS, target, expected, culprit, args, reason))
    return kinds


# Configs: name, YAML files to write {file name: text} (the first is the recipe; None: no recipe),
# overrides, the culprit (a file name is made absolute), the verbs that read it.
def _config_entries() -> list[tuple[str, dict[str, bytes], tuple[str, ...], str, tuple[str, ...]]]:
    both, train = ("train", "data check"), ("train",)
    return [
        ("unknown key in a file", {"typo.yaml": b"train:\n  lrr: 0.1\n"}, (), "train.lrr", both),
        ("unknown key on the command line", {}, ("train.lrr=0.1",), "train.lrr", both),
        ("wrong type", {}, ("train.epochs=abc",), "train.epochs", both),
        ("wrong type in a file", {"type.yaml": b"data:\n  batch_size: [8]\n"}, (), "data.batch_size", both),
        ("bad YAML syntax", {"tabs.yaml": b"train:\n\tlr: 0.1\n"}, (), "tabs.yaml:2", both),
        ("non-UTF-8 YAML", {"latin1.yaml": "# caf\xe9\ntrain:\n  lr: 0.1\n".encode("latin-1")}, (), "latin1.yaml",
         both),
        ("YAML that is a list", {"list.yaml": b"- train\n- eval\n"}, (), "list.yaml", both),
        ("include of a missing file", {"inc.yaml": b"include: [nowhere.yaml]\n"}, (), "nowhere.yaml", both),
        ("include loop", {"loop_a.yaml": b"include: [loop_b.yaml]\n", "loop_b.yaml": b"include: [loop_a.yaml]\n"},
         (), "loop_a.yaml", both),
        ("config file that does not exist", {"absent.yaml": None}, (), "absent.yaml", both),
        ("config file that is a folder", {"folder.yaml": "folder"}, (), "folder.yaml", both),
        ("unknown method", {}, ("model.method=glsimm",), "model.method", train),
        ("unknown backbone", {}, ("model.backbone=vit_nope_patch16_224",), "vit_nope_patch16_224", train),
        ("unknown choice", {}, ("data.on_error=ignore",), "data.on_error", both),
        ("negative lr", {}, ("train.lr=-0.1",), "train.lr", both),
        ("batch size 0", {}, ("data.batch_size=0",), "data.batch_size", both),
        ("warm-up longer than the run", {}, ("train.warmup_steps=1000",), "train.warmup_steps", train),
        ("weights file that does not exist", {}, ("model.pretrained=true", "model.weights=WEIGHTS"),
         "no_weights.safetensors", train),
    ]


def write_configs(folder: Path) -> list[BadInput]:
    """Each config kind: `path` is the recipe (or None-like `folder` when there is none), `args` the
    overrides that go after the dataset's."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = []
    for kind, files, overrides, culprit, verbs in _config_entries():
        recipe = None
        for name, text in files.items():
            path = folder / name
            recipe = recipe or path
            if text == "folder":
                path.mkdir()
            elif text is not None:
                path.write_bytes(text)
        overrides = tuple(o.replace("WEIGHTS", str(folder / "no_weights.safetensors")) for o in overrides)
        if culprit.split(":")[0].endswith((".yaml", ".safetensors")):
            culprit = str(folder / culprit)
        kinds.append(BadInput(kind, verbs, recipe or folder, "error", culprit, overrides))
    return kinds


CHECKPOINT_VERBS = ("predict", "eval", "explain", "serve")


def write_checkpoints(folder: Path, checkpoint: Path, adapter: Path, backbone: Path) -> list[BadInput]:
    """Each checkpoint kind, made from a good `checkpoint` and an adapter-only one (`adapter`,
    trained on the backbone weights file `backbone`; this replaces or removes that file)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = checkpoint.read_bytes()
    writes = {
        "random.safetensors": os.urandom(4096),
        "empty.safetensors": b"",
        "truncated.safetensors": half(good),
        "text.safetensors": b"not a checkpoint at all\n",
    }
    for name, data in writes.items():
        (folder / name).write_bytes(data)
    pickled = folder / "model.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, pickled)
    plain = folder / "plain.safetensors"
    save_random_vit(plain, **TINY)
    bad_config = folder / "bad_config.safetensors"
    _with_metadata(checkpoint, bad_config, config="model: [unclosed")
    (folder / "empty_run" / "checkpoints").mkdir(parents=True)
    kinds = [
        BadInput("random bytes named .safetensors", CHECKPOINT_VERBS, folder / "random.safetensors", "error"),
        BadInput("zero-byte checkpoint", CHECKPOINT_VERBS, folder / "empty.safetensors", "error"),
        BadInput("truncated safetensors", CHECKPOINT_VERBS, folder / "truncated.safetensors", "error"),
        BadInput("text file named .safetensors", CHECKPOINT_VERBS, folder / "text.safetensors", "error"),
        BadInput("pickle .pth (refused, never unpickled)", CHECKPOINT_VERBS, pickled, "error", reason="pickle"),
        BadInput("safetensors that is not an fgir checkpoint", CHECKPOINT_VERBS, plain, "error",
                 reason="not an fgir checkpoint"),
        BadInput("metadata YAML that does not parse", CHECKPOINT_VERBS, bad_config, "error", reason="'config'"),
        BadInput("checkpoint that does not exist", CHECKPOINT_VERBS, folder / "absent.safetensors", "error"),
        BadInput("run folder without checkpoints", CHECKPOINT_VERBS, folder / "empty_run", "error"),
    ]
    kinds += _adapter_kinds(folder, adapter, backbone)
    return [BadInput(k.kind, k.verbs, k.path, k.expected, k.culprit or str(k.path), k.args, k.reason) for k in kinds]


def _adapter_kinds(folder: Path, adapter: Path, backbone: Path) -> list[BadInput]:
    """The adapter-only checkpoint with its backbone file replaced by other weights, and a copy
    of it pointing at a backbone file that no longer exists."""
    missing = folder / "adapter_missing_backbone.safetensors"
    gone = folder / "gone_backbone.safetensors"
    _with_metadata(adapter, missing, backbone=_backbone_entry(adapter).replace(str(backbone), str(gone)))
    changed = folder / "adapter_changed_backbone.safetensors"
    changed.write_bytes(adapter.read_bytes())
    save_random_vit(backbone, seed=1, **TINY)  # the training file, overwritten by another backbone
    return [
        BadInput("adapter-only checkpoint, backbone file missing", CHECKPOINT_VERBS, missing, "error",
                 str(gone), reason="--weights"),
        BadInput("adapter-only checkpoint, backbone file changed (SHA-256)", CHECKPOINT_VERBS, changed, "error",
                 str(backbone), reason="SHA-256"),
    ]


def _backbone_entry(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()["backbone"]


def _with_metadata(source: Path, target: Path, **entries: str) -> None:
    """A copy of checkpoint `source` with metadata `entries` replaced."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        metadata = {**handle.metadata(), **entries}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(target), metadata=metadata)


def write_uploads(folder: Path) -> list[BadInput]:
    """What a browser may send the demo that it must refuse; `culprit` is the name the user picked."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = [
        ("upload: non-image bytes", "notes.png", b"%PDF-1.4 not a picture\n" * 20, "not an image"),
        ("upload: zero bytes", "empty.png", b"", "not an image"),
        ("upload: huge-pixel image", "bomb.png", png_header_only(OVER_LIMIT_SIDE, OVER_LIMIT_SIDE), "megapixels"),
        ("upload: over Pillow's bomb limit", "huge.png", png_header_only(OVER_PILLOW_SIDE, OVER_PILLOW_SIDE),
         "megapixels"),
        ("upload: truncated JPEG", "cut.jpg", half(encoded(noise_image(17), "JPEG")), "cannot be decoded"),
        ("upload: HEIC", "photo.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64), "not an image"),
    ]
    kinds = []
    for kind, name, data, reason in entries:
        path = folder / name
        path.write_bytes(data)
        kinds.append(BadInput(kind, ("serve",), path, "error", name, reason=reason))
    oversize = folder / "large.jpg"
    with open(oversize, "wb") as handle:
        handle.write(encoded(noise_image(18), "JPEG"))
        handle.truncate(OVERSIZE_UPLOAD_BYTES)
    kinds.append(BadInput("upload: oversize file", ("serve",), oversize, "error", "large.jpg", reason="10 MB"))
    return kinds
