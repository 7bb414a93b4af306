"""The report's hand-written SVG charts: one self-contained, escaped ``<svg>`` per chart, with round ticks."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from reconciler.report_charts import line_chart, nice_step, tick_label, y_ticks

SVG = "{http://www.w3.org/2000/svg}"


def test_a_chart_is_one_well_formed_svg_with_a_point_per_known_value() -> None:
    """The markup parses as XML, has one circle per known value, and skips runs without one."""
    svg = line_chart(["1", "2", "3", "4"], [3.0, None, 4.0, 0.0], "Drifting customers per run", "customers")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and svg.count("<svg") == 1
    assert len(root.findall(f"{SVG}circle")) == 3
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Drifting customers per run" in texts and "customers" in texts and "run" in texts
    assert {"1", "2", "3", "4"} <= set(texts)
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched


def test_text_is_escaped_and_an_empty_series_says_so() -> None:
    """Titles and labels cannot inject markup; a chart with no values shows 'no data yet'."""
    svg = line_chart(["<b>"], [None], "A & B <script>", "h")
    ET.fromstring(svg)
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&amp;" in svg
    assert "no data yet" in svg


def test_ticks_are_round_start_at_zero_and_cover_the_largest_value() -> None:
    """Y ticks step by 1, 2, 2.5 or 5 times a power of ten, from 0 to at least the maximum."""
    assert y_ticks([3, 4, 3]) == [0, 1, 2, 3, 4]
    assert y_ticks([357.27]) == [0, 100, 200, 300, 400]
    assert y_ticks([0.5, 24.25]) == [0, 5, 10, 15, 20, 25]
    assert y_ticks([]) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_step(12.0) == 2.5 and nice_step(0.3) == 0.1
    assert tick_label(1500.0) == "1,500" and tick_label(0.25) == "0.25"
