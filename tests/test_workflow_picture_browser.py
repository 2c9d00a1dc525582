"""A workflow picture in a real browser: headless Chromium opens the SVG the server draws for
the bundled dog-breed example, and its screenshot and DOM show the whole picture."""

import pytest
from PIL import Image

from support.pictures import CHROMIUM, dog_breed_svg, dump_dom, screenshot, svg_size

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (scripts/setup.sh installs Debian's chromium)")

NODES = ("pre_processing", "cat_dog_classification", "dog_breed_classification",
         "post_processing")
#: Fills of model and function nodes (src/workflow/picture/graph.rs).
MODEL_FILL, FUNCTION_FILL = (0xCF, 0xE2, 0xFF), (0xD1, 0xE7, 0xDD)
WHITE = (255, 255, 255)


@pytest.fixture(scope="module")
def picture(start_module_server, tmp_path_factory):
    """The example's SVG, with stats after its four requests, saved to a file."""
    path = tmp_path_factory.mktemp("picture") / "dog_breed.svg"
    path.write_text(dog_breed_svg(start_module_server()))
    return path


def test_chromium_draws_every_box_in_colour_and_nothing_clipped(picture, tmp_path):
    png = tmp_path / "dog_breed.png"
    width, height = svg_size(picture.read_text())
    screenshot(picture, png, (width, height))
    image = Image.open(png).convert("RGB")
    assert image.size == (width, height)
    counts = {colour: n for n, colour in image.getcolors(maxcolors=width * height)}
    # Two model boxes and two function boxes, filled: each fill covers thousands of pixels.
    assert counts.get(MODEL_FILL, 0) > 10000 and counts.get(FUNCTION_FILL, 0) > 10000, counts
    assert len(counts) >= 10, "text and edges are anti-aliased into many shades"
    dark = sum(n for colour, n in counts.items() if max(colour) < 80)
    assert dark > 1000, "text and edges are drawn in black"
    drawn = width * height - counts.get(WHITE, 0)
    assert 0.2 < drawn / (width * height) < 0.8, (drawn, image.size)
    # The viewBox holds the whole picture: a white margin on every side, nothing cut at an edge.
    left, top, right, bottom = Image.eval(image, lambda v: 255 - v).getbbox()
    assert left >= 4 and top >= 4 and right <= width - 4 and bottom <= height - 4, \
        (left, top, right, bottom, image.size)


def test_chromium_parses_the_svg_with_every_node_and_route_label(picture):
    dom = dump_dom(picture)
    assert dom.lstrip().startswith("<svg") and "parsererror" not in dom, dom[:500]
    for text in (*NODES, "dog", "default", "calls 4", "calls 2", "workflow dog_breed"):
        assert text in dom, text
