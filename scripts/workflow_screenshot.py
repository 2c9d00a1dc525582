"""Regenerates docs/images/workflow.png: the bundled dog-breed example's picture
(`?format=svg&stats=true` after a few requests) as headless Chromium shows it.

Usage: .venv/bin/python scripts/workflow_screenshot.py [OUTPUT_PNG]
Needs target/release/torchyard (cargo build --release) and the `chromium` binary
(scripts/setup.sh installs both).
"""

import sys
import tempfile
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.pictures import CHROMIUM, dog_breed_svg, screenshot, svg_size  # noqa: E402
from support.server import Server  # noqa: E402

#: Device pixels per CSS pixel: sharp on high-density screens, still a small file.
SCALE = 2
#: Colours kept in the PNG's palette (boxes, text and their anti-aliasing need few).
COLOURS = 64


def main(output: Path):
    if CHROMIUM is None:
        sys.exit("no chromium binary: run scripts/setup.sh")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "store").mkdir()
        server = Server(workdir, workdir / "store").start()
        try:
            svg = dog_breed_svg(server)
        finally:
            server.stop()
        page = workdir / "dog_breed.svg"
        page.write_text(svg)
        shot = workdir / "dog_breed.png"
        screenshot(page, shot, svg_size(svg), SCALE)
        output.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(COLOURS).save(output, optimize=True)
    print(f"{output}: {output.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images" / "workflow.png")
