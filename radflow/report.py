"""Plots as KFP HTML artifacts: the KFP UI renders an HTML artifact inline, but not a PNG file."""

from __future__ import annotations

import base64
import html
import os


def images_html(title: str, png_paths: list[str], notes: str = "") -> str:
    """A self-contained HTML page showing PNG files inline (base64), with an optional note."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<h2 style='font-family:sans-serif'>{html.escape(title)}</h2>"]
    if notes:
        parts.append(f"<pre>{html.escape(notes)}</pre>")
    parts.extend(embed_png(path) for path in png_paths if os.path.exists(path))
    return "\n".join(parts)


def embed_png(path: str, width: int | None = None) -> str:
    """An <img> tag carrying the PNG file itself (base64), so the page needs no other file."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    size = f" width='{width}'" if width else ""
    return f"<img alt='{html.escape(os.path.basename(path))}'{size} src='data:image/png;base64,{data}'>"


def write_images_html(path: str, title: str, png_paths: list[str], notes: str = "") -> None:
    with open(path, "w") as f:
        f.write(images_html(title, png_paths, notes))
