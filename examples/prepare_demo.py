"""Make the constants the demo (examples/xpcs_demo.json) calibrates, masks and bins with.

Run by ``framechain run`` (the config's ``prepare`` key) with the config path as argument. Writes into
the config's ``output_dir``: pedestal.npy and gain.npy (the simulated detector's exact maps, what a
dark run and a flat field would measure), mask.npy (1 = use: a beam stop and a dead column masked) and
qmap.npy (integer ring labels around the beam centre, 0 = excluded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from framechain.framereceiver.sources import make_source


def main(config_path: str) -> None:
    cfg = json.loads(Path(config_path).read_text())
    out = Path(cfg.get("output_dir", "output"))
    out.mkdir(parents=True, exist_ok=True)
    source = make_source(cfg["receiver"]["source"])
    pedestal, gain = source.detector_maps()
    np.save(out / "pedestal.npy", pedestal)
    np.save(out / "gain.npy", gain)
    h, w = source.shape
    y, x = np.indices((h, w))
    cy, cx = h / 2 - 0.5, w / 2 - 0.5
    r = np.hypot(y - cy, x - cx)
    mask = np.ones((h, w), np.uint8)
    mask[r < 6] = 0            # beam stop
    mask[:, w // 3] = 0        # a dead column
    np.save(out / "mask.npy", mask)
    nbins = 10
    edges = np.linspace(6, min(h, w) / 2, nbins + 1)
    qmap = np.digitize(r, edges).astype(np.int32)
    qmap[(r < edges[0]) | (r >= edges[-1])] = 0
    np.save(out / "qmap.npy", qmap)


if __name__ == "__main__":
    main(sys.argv[1])
