#!/usr/bin/env python3
"""Draws docs/perf-to-device.svg and docs/perf-to-host.svg from `vkhmm bench --json`.

Usage: vkhmm bench --json --sizes 4K,16K,...,256M > run.json
       python3 benches/perf_chart.py run.json docs/

Bandwidth (GB/s, log scale) against transfer size (log2), vkhmm solid, baselines dashed.
Plain SVG, no dependencies.
"""

import json
import math
import sys

TO_DEVICE = [
    ("memcpy", "memcpy (1 thread)", "#444444", True),
    ("prefetch_device_direct", "vkhmm prefetch, Direct", "#d62728", False),
    ("prefetch_device_staged", "vkhmm prefetch, Staged", "#ff7f0e", False),
    ("ash_staged_upload", "ash staging + vkCmdCopyBuffer", "#1f77b4", True),
    ("wgpu_upload", "wgpu write_buffer", "#2ca02c", True),
]
TO_HOST = [
    ("memcpy", "memcpy (1 thread)", "#444444", True),
    ("prefetch_host_direct", "vkhmm prefetch, Direct", "#d62728", False),
    ("prefetch_host_staged", "vkhmm prefetch, Staged", "#ff7f0e", False),
    ("faultback_seq_direct", "vkhmm CPU fault-back, Direct", "#9467bd", False),
    ("faultback_seq_staged", "vkhmm CPU fault-back, Staged", "#8c564b", False),
    ("ash_staged_download", "ash vkCmdCopyBuffer + staging", "#1f77b4", True),
    ("wgpu_download", "wgpu copy + map_async", "#2ca02c", True),
]

W, H = 760, 460
L, R, T, B = 70, 250, 40, 50


def size_label(b):
    if b >= 1 << 20:
        return f"{b >> 20}M"
    if b >= 1 << 10:
        return f"{b >> 10}K"
    return str(b)


def chart(series, data, title, device):
    pts = [p for key, *_ in series for p in data.get(key, [])]
    if not pts:
        return None
    xs = [math.log2(b) for b, _ in pts]
    ys = [g for _, g in pts if g > 0]
    x0, x1 = min(xs), max(xs)
    y0 = 10 ** math.floor(math.log10(min(ys)))
    y1 = 10 ** math.ceil(math.log10(max(ys)))
    if x1 == x0:
        x1 = x0 + 1

    def px(b):
        return L + (math.log2(b) - x0) / (x1 - x0) * (W - L - R)

    def py(g):
        g = max(g, y0)
        return T + (1 - (math.log10(g) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))) * (
            H - T - B
        )

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{L}" y="20" font-size="14" font-weight="bold">{title}</text>',
        f'<text x="{L}" y="34" fill="#666">{device}</text>',
    ]
    # grid
    e = int(math.log10(y0))
    while 10**e <= y1:
        for m in (1, 2, 5):
            g = m * 10**e
            if y0 <= g <= y1:
                y = py(g)
                color = "#ccc" if m == 1 else "#eee"
                out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="{color}"/>')
                if m in (1, 5) or (y1 / y0) <= 100:
                    out.append(
                        f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{g:g}</text>'
                    )
        e += 1
    for b in sorted({b for b, _ in pts}):
        x = px(b)
        out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H - B}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{H - B + 16}" text-anchor="middle">{size_label(b)}</text>')
    out.append(
        f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">transfer size (bytes)</text>'
    )
    out.append(
        f'<text x="16" y="{(T + H - B) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(T + H - B) / 2})">GB/s (log)</text>'
    )
    out.append(
        f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#888"/>'
    )
    ly = T + 10
    for key, label, color, dashed in series:
        p = sorted(data.get(key, []))
        if not p:
            continue
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        path = " ".join(f"{px(b):.1f},{py(g):.1f}" for b, g in p)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
        )
        for b, g in p:
            out.append(f'<circle cx="{px(b):.1f}" cy="{py(g):.1f}" r="2.5" fill="{color}"/>')
        out.append(
            f'<line x1="{W - R + 12}" y1="{ly}" x2="{W - R + 40}" y2="{ly}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{W - R + 46}" y="{ly + 4}">{label}</text>')
        ly += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    run = json.load(open(sys.argv[1]))
    data = run["series_gbps"]
    device = run.get("device", "")
    outdir = sys.argv[2].rstrip("/")
    for name, series, title in [
        ("perf-to-device.svg", TO_DEVICE, "Host to device: bandwidth against transfer size"),
        ("perf-to-host.svg", TO_HOST, "Device to host: bandwidth against transfer size"),
    ]:
        svg = chart(series, data, title, device)
        if svg:
            with open(f"{outdir}/{name}", "w") as f:
                f.write(svg)
            print(f"wrote {outdir}/{name}")


if __name__ == "__main__":
    main()
