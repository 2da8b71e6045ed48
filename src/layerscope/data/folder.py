"""A folder of the user's images, with optional masks matched by file name."""
from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from pathlib import Path

from PIL import Image

from .base import DatasetBase, Sample
from .ids import path_id, safe_name
from .images import BadImage, read_image, read_mask
from .references import draw, without_test_copies
from .transforms import resize_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def header_size(path: Path) -> tuple[int, int] | None:
    """(W, H) after EXIF rotation from the header alone, or None when unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - unreadable files are reported when loaded
        return None


def _not_a_file(path: Path) -> str:
    """What a path named as an image is when it is no regular file."""
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    if path.is_dir():
        return "a folder"
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device file" \
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file"


def _walk(root: Path, skip: Path | None = None) -> list[Path]:
    """Every file below ``root``, following symlinked folders; each folder is read once.

    Real folders are read first, then the folders that symlinks lead to, so a folder reached both
    ways keeps its own path (and category). A link to a folder read already (a symlink loop, or a
    second link to one folder) is skipped with a warning, as is ``skip`` (the masks).
    """
    skip = skip.resolve() if skip is not None else None
    seen: set[Path] = set()
    files: list[Path] = []
    links: list[Path] = []

    def read(top: Path) -> None:
        for folder, dirs, names in os.walk(top):  # does not enter symlinked folders: they wait in ``links``
            real = Path(folder).resolve()
            if real in seen or real == skip:
                if real in seen:
                    log.warning("data.recursive: %s not read: it is %s, read already (a symlink loop or a second "
                                "link to one folder)", folder, real)
                dirs[:] = []
                continue
            seen.add(real)
            files.extend(Path(folder) / name for name in names)
            links.extend(sorted(Path(folder) / d for d in dirs if (Path(folder) / d).is_symlink()))

    read(root)
    while links:
        read(links.pop(0))
    return files


def _refuse_shared_ids(root: Path, files: list[Path], ids: list[str]) -> None:
    """Stop before the run when two files would share an image id (and so one maps file, one figure, one
    line of ``done.txt``). ``path_id`` keeps paths apart; what remains is a suffix kept to tell ``x.png``
    from ``x.tif`` meeting a file named so (``x.png.png``).

    Raises:
        ValueError: naming both files.
    """
    seen: dict[str, Path] = {}
    for path, image_id in zip(files, ids):
        key = safe_name(image_id)  # the name its files get in the run folder
        if key in seen:
            raise ValueError(f"data.root={root}: {seen[key].relative_to(root)} and {path.relative_to(root)} both "
                             f"become image id {key!r} (one maps file and one row set for two images); rename one")
        seen[key] = path


class Folder(DatasetBase):
    """Every image under ``root``; a mask for ``x.png`` is ``mask_dir/x.png`` or ``mask_dir/x_mask.png``.

    Masks are checked against their images at construction (from the file headers), so a
    size mismatch stops the run before any model loads; unreadable images are reported when
    loaded (the study skips them). See ``read_mask`` for how mask values become foreground.

    Args:
        root: folder of images (searched recursively when ``recursive``).
        mask_dir: folder of masks, or None for no masks.
        recursive: include subfolders; their names become the category.
        normal_dir: folder of defect-free images, the references of ``method=patch_knn``.
        resize_masks: resize a mask of another size than its image (by ``resize_mask``: no
            defect vanishes) instead of stopping with an error.

    Raises:
        FileNotFoundError: ``root`` (or ``mask_dir``) is missing.
        ValueError: no images found.
    """

    def __init__(self, root: str, mask_dir: str | None = None, recursive: bool = False, normal_dir: str | None = None,
                 resize_masks: bool = False):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={self.root}: no such folder")
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(f"data.mask_dir={self.mask_dir}: no such folder")
        self.normal_dir = Path(normal_dir).expanduser() if normal_dir else None
        if self.normal_dir is not None and not self.normal_dir.is_dir():
            raise FileNotFoundError(f"data.normal_dir={self.normal_dir}: no such folder")
        # every entry named as an image: one that is no regular file (a dangling link, a FIFO, a folder called
        # x.png) is listed with the skipped images when read, not dropped without a word
        self.files = sorted(p for p in (_walk(self.root, self.mask_dir) if recursive else self.root.iterdir())
                            if p.suffix.lower() in IMAGE_SUFFIXES
                            and (self.mask_dir is None or self.mask_dir not in p.parents))
        if not self.files:
            raise ValueError(f"data.root={self.root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        stems = Counter(p.relative_to(self.root).with_suffix("") for p in self.files)
        # x.png and x.tif are two images: their ids keep the suffix; a lone x.png is plainly "x"
        keep_suffix = {p for p in self.files if stems[p.relative_to(self.root).with_suffix("")] > 1}
        self.ids = [path_id((p.relative_to(self.root) if p in keep_suffix else
                             p.relative_to(self.root).with_suffix("")).parts) for p in self.files]
        _refuse_shared_ids(self.root, self.files, self.ids)
        self.resize_masks = bool(resize_masks)
        for path in self.files if not self.resize_masks else []:
            if not path.is_file():  # not opened: a FIFO would wait for a writer
                continue
            mask_path = self._mask_path(path)
            sizes = (header_size(path), header_size(mask_path)) if mask_path else (None, None)
            if None not in sizes and sizes[0] != sizes[1]:
                (iw, ih), (mw, mh) = sizes
                raise ValueError(f"{mask_path}: mask is {mw}x{mh}, image {path.name} is {iw}x{ih}; expected the "
                                 "same size (or data.resize_masks=true)")

    def name_of(self, i: int) -> str:
        """The file behind item ``i`` (for messages about unreadable files)."""
        return str(self.files[i])

    def __len__(self) -> int:
        return len(self.files)

    def _mask_path(self, image: Path) -> Path | None:
        if self.mask_dir is None:
            return None
        rel = image.relative_to(self.root).with_suffix("")
        for cand in (self.mask_dir / rel.parent / f"{rel.name}{s}" for s in ("_mask.png", ".png", "_mask.bmp", ".bmp")):
            try:
                if cand.exists():
                    return cand
            except OSError:  # a candidate name too long for the file system cannot be there
                continue
        return None

    def __getitem__(self, i: int) -> Sample:
        path = self.files[i]
        if not path.is_file():
            raise BadImage(f"{path}: {_not_a_file(path)}, not an image file")
        image = read_image(path)
        mask_path = self._mask_path(path)
        mask = read_mask(mask_path) if mask_path else None
        if mask is not None and mask.shape != image.shape[:2]:
            if not self.resize_masks:
                raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {path.name} is "
                                 f"{image.shape[1]}x{image.shape[0]}; expected the same size (or data.resize_masks=true)")
            mask = resize_mask(mask, image.shape[:2]).numpy()  # no defect vanishes when the mask shrinks
        rel = path.relative_to(self.root)
        return Sample(id=self.ids[i], image=image, mask=mask, category=rel.parent.name if rel.parent.parts else "",
                      source=str(path))

    @property
    def has_references(self) -> bool:
        """Whether ``data.normal_dir`` was given."""
        return self.normal_dir is not None

    def references(self, n: int | None, seed: int = 0) -> list[Sample]:
        """``n`` images of ``normal_dir`` drawn by ``seed`` (``data.references.draw``; None: all), none of them a
        test image (an image under ``root``: same file or same bytes).

        Raises:
            ValueError: no ``normal_dir`` was given, it holds no images (besides test images), or fewer than ``n``.
        """
        if self.normal_dir is None:
            raise ValueError("this method needs defect-free reference images: set data.normal_dir=/path/to/good")
        files = sorted(p for p in self.normal_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        pool = without_test_copies(files, self.files)
        if not pool:
            raise ValueError(f"data.normal_dir={self.normal_dir}: no images found"
                             + (" besides the test images under data.root" if files else ""))
        chosen = [pool[i] for i in draw(len(pool), n, seed, f"data.normal_dir={self.normal_dir}")]
        return [Sample(id=f"normal_{p.stem}", image=read_image(p), category="good", source=str(p)) for p in chosen]
