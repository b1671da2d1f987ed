"""The `emoji` set: Google's 64x64 emoji images from the npm package emoji-datasource-google (Apache-2.0),
with each emoji's name as its caption ("an emoji of grinning face", "... medium skin tone").

`noisecraft data emoji` runs `npm pack` (or takes a tarball already on disk) and unpacks the images and a
metadata.jsonl of captions into one folder, which the image-folder loader then reads like any other.
The folder appears complete or not at all: it is filled under a temporary name and renamed at the end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from noisecraft.errors import NoisecraftError

PACKAGE = "emoji-datasource-google"
IMAGES = "package/img/google/64/"
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


def emoji_dir() -> Path:
    """Where the unpacked set lives: $NOISECRAFT_DATA/emoji, else ~/.cache/noisecraft/emoji."""
    root = os.environ.get("NOISECRAFT_DATA")
    return (Path(root) if root else Path.home() / ".cache" / "noisecraft") / "emoji"


def _tone(key: str) -> str:
    tones = [SKIN_TONES.get(part.upper(), part.lower()) for part in key.split("-")]
    return f"{tones[0]} skin tone" if len(set(tones)) == 1 else f"{' and '.join(tones)} skin tones"


def captions(index: list[dict]) -> dict[str, str]:
    """Image file name -> caption, from the package's emoji.json (skin-tone variants get their tone)."""
    out = {}
    for entry in index:
        name = (entry.get("name") or entry.get("short_name") or "").lower()
        if not name:
            continue
        if entry.get("has_img_google"):
            out[entry["image"]] = f"an emoji of {name}"
        for key, variant in (entry.get("skin_variations") or {}).items():
            if variant.get("has_img_google"):
                out[variant["image"]] = f"an emoji of {name}, {_tone(key)}"
    return out


def _npm_pack(workdir: Path) -> Path:
    if shutil.which("npm") is None:
        raise NoisecraftError(f"npm is not installed: install it (apt install npm) or pass --tarball with "
                              f"`npm pack {PACKAGE}` made elsewhere")
    result = subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(workdir)], capture_output=True, text=True)
    tarballs = sorted(workdir.glob(f"{PACKAGE}-*.tgz"))
    if result.returncode != 0 or not tarballs:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise NoisecraftError(f"`npm pack {PACKAGE}` failed ({last}): check the npm registry is reachable, "
                              "or pass --tarball")
    return tarballs[-1]


def unpack_emoji(dest: Path | None = None, tarball: Path | None = None) -> tuple[Path, int]:
    """Unpack the emoji images and their captions into `dest` (default: emoji_dir()). Returns (dest, count)."""
    dest = Path(dest) if dest is not None else emoji_dir()
    if (dest / "metadata.jsonl").is_file():
        return dest, sum(1 for _ in (dest / "metadata.jsonl").open())
    if dest.exists():
        raise NoisecraftError(f"{dest} exists and is not an unpacked emoji set: remove it or choose another folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp)
        tgz = Path(tarball) if tarball is not None else _npm_pack(work)
        if not tgz.is_file():
            raise NoisecraftError(f"tarball {tgz} does not exist: give the .tgz made by `npm pack {PACKAGE}`")
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                if "package/emoji.json" not in members:
                    raise NoisecraftError(f"{tgz} is not the {PACKAGE} package (no package/emoji.json)")
                names = captions(json.load(tar.extractfile(members["package/emoji.json"])))
                out = work / "emoji"
                out.mkdir()
                rows = []
                for file_name, caption in sorted(names.items()):
                    member = members.get(IMAGES + file_name)
                    if member is None:
                        continue
                    (out / file_name).write_bytes(tar.extractfile(member).read())
                    rows.append(json.dumps({"file_name": file_name, "text": caption}))
        except (tarfile.TarError, OSError, EOFError, json.JSONDecodeError) as e:
            raise NoisecraftError(f"could not read {tgz} ({e}): download it again with `npm pack {PACKAGE}`") from None
        if not rows:
            raise NoisecraftError(f"{tgz} holds no 64x64 Google emoji images")
        (out / "metadata.jsonl").write_text("\n".join(rows) + "\n")
        os.replace(out, dest)
    return dest, len(rows)
