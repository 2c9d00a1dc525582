"""Workflow pictures as a browser shows them: the bundled dog-breed example drawn by a server,
and headless Chromium (Debian's `chromium` package, which scripts/setup.sh installs) to
screenshot an SVG or dump the DOM it parsed."""

import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import requests

from .server import BINARY, PYTHON, REPO

#: The Chromium binary, or None where it is not installed.
CHROMIUM = shutil.which("chromium")

#: Four-number "images" for the dog-breed example: two dogs (which reach the breed model),
#: a cat and a bird (which do not).
DOG_BREED_IMAGES = ("[0.9, 0.1, 0, 1.0]", "[0.1, 0.9, 0, 1.0]", "[0.9, 0, 0.1, -1.0]",
                    "[0, 0.1, 0.8, 0]")


def dog_breed_svg(server) -> str:
    """Builds examples/dog_breed into `server`'s store, registers it, sends it
    DOG_BREED_IMAGES and answers its picture with stats (`?format=svg&stats=true`)."""
    subprocess.run([str(REPO / "examples" / "dog_breed" / "build.sh"), str(server.store),
                    str(BINARY), str(PYTHON)], check=True, capture_output=True)
    answer = requests.post(f"{server.management}/workflows", params={"url": "dog_breed.war"})
    answer.raise_for_status()
    for image in DOG_BREED_IMAGES:
        requests.post(f"{server.inference}/wfpredict/dog_breed", data={"data": image},
                      timeout=30).raise_for_status()
    svg = requests.get(f"{server.management}/workflows/dog_breed",
                       params={"format": "svg", "stats": "true"})
    svg.raise_for_status()
    return svg.text


def svg_size(svg: str) -> tuple:
    """The SVG's width and height in whole pixels, rounded up."""
    root = ElementTree.fromstring(svg.encode())
    return math.ceil(float(root.get("width"))), math.ceil(float(root.get("height")))


def _chromium(*args: str) -> str:
    """Runs headless Chromium with a throwaway profile; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--hide-scrollbars", "--no-first-run", "--disable-quic",
             # No network: background fetches would only be refused on a closed machine.
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            check=True, capture_output=True, text=True, timeout=60).stdout


def screenshot(page: Path, png: Path, size: tuple, scale: int = 1):
    """Chromium's screenshot of the file `page` in a window of `size` (CSS pixels), at
    `scale` device pixels per CSS pixel."""
    _chromium(f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
              f"--force-device-scale-factor={scale}", page.resolve().as_uri())


def dump_dom(page: Path) -> str:
    """The DOM Chromium built from the file `page`, serialised."""
    return _chromium("--dump-dom", page.resolve().as_uri())
