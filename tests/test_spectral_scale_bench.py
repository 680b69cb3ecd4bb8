"""`samplegrad bench spectral-scale --quick` end to end (synthetic images, no Fashion-MNIST)."""

import json

import torch

from samplegrad_bench.cli import main
from samplegrad_bench.runners.spectral_scale import local_pairs


def test_local_pairs_are_the_grid_neighbours():
    p = local_pairs(5, 1)
    assert p.shape == (2 * 5 * 4 + 2 * 4 * 4, 2)  # horizontal, vertical, two diagonals
    r, c = p // 5, p % 5
    assert int((r[:, 0] - r[:, 1]).abs().max()) == 1 and int((c[:, 0] - c[:, 1]).abs().max()) == 1
    assert len({tuple(sorted(x)) for x in p.tolist()}) == p.shape[0]
    assert local_pairs(4, 2).shape[0] > local_pairs(4, 1).shape[0]
    assert torch.equal(local_pairs(1, 1), torch.zeros(0, 2, dtype=torch.int64))


def test_cli_quick_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "spectral-scale", "--quick", "--sections", "scale,images", "--out",
                 "res"]) == 0
    got = json.loads((tmp_path / "res" / "quick" / "spectral_scale_scale_quick.json").read_text())
    rows = got["scale"]["rows"]
    assert {r["model"] for r in rows} == {"PCA-8 additive", "PCA-8 all pairs",
                                          "pixels-36 local pairs"}
    # pairs help on the synthetic blobs: a larger held-out Fisher gain than the additive basis
    gain = {r["model"]: r["Fisher gain t=0.1"] for r in rows}
    assert gain["PCA-8 all pairs"] > gain["PCA-8 additive"]
    img = json.loads((tmp_path / "res" / "quick" /
                      "spectral_scale_images_quick.json").read_text())["images"]
    assert "PCA-feature" in img["metric"] or "principal" in img["metric"]
    assert all(r["FD"] >= 0 for r in img["rows"])
    assert (tmp_path / "res" / "quick" / "samples.png").exists()
    assert (tmp_path / "res" / "quick" / "summary_quick.md").exists()
