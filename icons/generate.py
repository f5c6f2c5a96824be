#!/usr/bin/env python3
"""Generate every application icon from icon.svg.

Needs rsvg-convert (Debian: librsvg2-bin) and Pillow (pip install pillow). Writes the PNG sizes
Tauri bundles, icon.ico (Windows) and icon.icns (macOS) next to this script.
"""
import io
import pathlib
import subprocess

from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent


def render(size: int) -> Image.Image:
    png = subprocess.run(
        ["rsvg-convert", "-w", str(size), "-h", str(size), str(HERE / "icon.svg")],
        check=True,
        capture_output=True,
    ).stdout
    return Image.open(io.BytesIO(png)).convert("RGBA")


def main() -> None:
    big = render(1024)
    for name, size in {
        "32x32.png": 32,
        "64x64.png": 64,
        "128x128.png": 128,
        "128x128@2x.png": 256,
        "icon.png": 512,
    }.items():
        render(size).save(HERE / name)
    big.save(HERE / "icon.ico", sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (256, 256)])
    big.save(HERE / "icon.icns")


if __name__ == "__main__":
    main()
