"""Every figure the project writes explains itself: checked on the Figure object just before it is saved.

Rules (issue #17): an Axes showing scalar images has a colour bar (with a label) for one of them (its colour map and range);
an Axes with two or more lines has a legend (its own or the figure's); every Axes with content has a title; no
text smaller than 7 pt. RGB images (photos, composited CAMs) need no colour bar. ``data/qc.py`` (the QC montage)
is checked by its own tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

pytestmark = pytest.mark.filterwarnings("error::UserWarning")  # tight_layout / colour-bar warnings are failures


def _is_colorbar_axes(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def figure_problems(fig) -> list[str]:
    """What is missing in ``fig`` (empty when it follows the rules above)."""
    problems = []
    cbars = [ax._colorbar for ax in fig.axes if _is_colorbar_axes(ax)]
    for cb in cbars:
        if not (cb.ax.get_ylabel() or cb.ax.get_xlabel()):
            problems.append("colour bar without a label (units)")
    fig_legend = bool(fig.legends)
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    for ax in fig.axes:
        if _is_colorbar_axes(ax):
            continue
        name = ax.get_title() or "<untitled axes>"
        images = [im for im in ax.get_images() if np.ndim(im.get_array()) == 2]
        scaled = [im for im in images if any(
            cb.mappable is im or (cb.cmap.name == im.cmap.name and np.isclose(cb.norm.vmin, im.norm.vmin)
                                  and np.isclose(cb.norm.vmax, im.norm.vmax)) for cb in cbars)]
        if images and not scaled:  # (a grey scan under a coloured overlay with a colour bar is context)
            problems.append(f"{name}: image(s) with colour map(s) {[im.cmap.name for im in images]} but no colour bar")
        n_lines = len([ln for ln in ax.get_lines() if ln.get_visible()])
        if n_lines >= 2 and ax.get_legend() is None and not fig_legend:
            problems.append(f"{name}: {n_lines} lines and no legend")
        has_content = bool(ax.get_images() or ax.get_lines() or ax.collections or ax.patches)
        if has_content and not ax.get_title() and not (len(fig.axes) - len(cbars) == 1 and suptitle):
            problems.append("an Axes with content has no title")
    for text in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        if text.get_text() and text.get_visible() and text.get_fontsize() < 7:
            problems.append(f"text {text.get_text()[:30]!r} at {text.get_fontsize():.1f} pt (< 7 pt)")
    return problems


@pytest.fixture
def checked(monkeypatch):
    """Patch Figure.savefig: record the problems of every saved figure (by file name)."""
    seen: dict[str, list[str]] = {}
    original = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        seen[str(getattr(fname, "name", fname))] = figure_problems(self)
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return seen


def _assert_clean(seen: dict, expected: int):
    assert len(seen) >= expected, f"expected {expected} figures, saw {sorted(seen)}"
    bad = {k: v for k, v in seen.items() if v}
    assert not bad, bad


def test_the_checker_catches_missing_pieces():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng().random((4, 4)))
    ax.plot([0, 1], [0, 1])
    ax.plot([0, 1], [1, 0])
    problems = figure_problems(fig)
    plt.close(fig)
    assert any("no colour bar" in p for p in problems)
    assert any("no legend" in p for p in problems)
    assert any("no title" in p for p in problems)


def _predictions(rng, n=60):
    time = rng.uniform(1, 80, n)
    event = (rng.random(n) < 0.7).astype(int)
    pred = time + rng.normal(0, 10, n)
    return pd.DataFrame({"id": [f"c{i}" for i in range(n)], "time": time, "event": event, "pred_time": pred,
                         "risk": -pred, "expected_time": time + rng.normal(0, 3, n)})


def test_evaluation_figures(checked, tmp_path, rng):
    from survival3d.metrics.figures import plot_calibration, plot_km_by_risk_tertile, plot_pred_vs_observed

    df = _predictions(rng)
    pmf = rng.dirichlet(np.ones(100), size=len(df))
    plot_pred_vs_observed(df, tmp_path / "pred.png", title="run")
    plot_km_by_risk_tertile(df, tmp_path / "km.png")
    plot_calibration(df, pmf, [20, 40], tmp_path / "cal.png")
    _assert_clean(checked, 3)


def _case(rng, size=24, lesion=True):
    image = rng.normal(0, 1, (size,) * 3).astype(np.float32)
    heat = np.kron(rng.random((size // 4,) * 3), np.ones((4, 4, 4))).astype(np.float32)
    mask = np.zeros_like(image)
    if lesion:
        c = rng.integers(6, size - 6, 3)
        mask[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 1
    lung = np.zeros_like(image)
    lung[2:-2, 2:-2, 2:-2] = 1
    return image, heat, mask, lung


@pytest.mark.parametrize("lesion", [True, False])
def test_explain_figures(checked, tmp_path, rng, lesion):
    from survival3d.explain.io import plot_3d, plot_overlays

    image, heat, mask, lung = _case(rng, lesion=lesion)
    plot_overlays(image, heat, tmp_path / "o.png", mask=mask, lung_mask=lung, title="case · gradcam")
    plot_overlays(image, np.stack([heat] * 3), tmp_path / "rgb.png", mask=mask, title="case · pca", rgb=True)
    plot_3d(heat, tmp_path / "3d.png", mask=mask, lung_mask=lung, title="case · gradcam")
    plot_3d(heat, tmp_path / "3d_box.png", mask=mask, title="case · gradcam")
    _assert_clean(checked, 4)


def test_3d_view_draws_a_lesion_smaller_than_its_marching_step(tmp_path, monkeypatch):
    """A one-voxel nodule at an odd index of a 64^3 volume (marching-cubes step 2) is drawn, not a crash (session 16:
    `run.py explain` stopped on a small ct1 nodule with "No surface found at the given iso value")."""
    from survival3d.explain import io

    figs = []
    monkeypatch.setattr(io, "_save", lambda fig, path: figs.append(fig) or path)
    mask = np.zeros((64, 64, 64), np.uint8)
    mask[30, 32, 28] = 1  # +1 of padding: odd indices, between the samples of a step-2 grid
    heat = np.zeros((64, 64, 64), np.float32)
    heat[28:32, 32:36, 28:32] = 1.0
    io.plot_3d(heat, tmp_path / "3d.png", mask=mask, title="one voxel")
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert "GT lesion" in labels and any(lb.startswith("heatmap") for lb in labels)


def test_overlay_draws_distractors_with_a_legend_entry(tmp_path, rng, monkeypatch):
    """ct3's distractors: a yellow contour on the slices that cut them and a "distractor" legend entry; none without."""
    from survival3d.explain import io

    figs = []
    monkeypatch.setattr(io, "_save", lambda fig, path: figs.append(fig) or path)
    image, heat, mask, lung = _case(rng)
    distractor = (heat == heat.max()).astype(np.float32)  # the peak cubelet: cut by every slice through the peak
    io.plot_overlays(image, heat, tmp_path / "o.png", mask=mask, lung_mask=lung, distractor_mask=distractor)
    io.plot_overlays(image, heat, tmp_path / "p.png", mask=mask, lung_mask=lung)
    labels = [[t.get_text() for t in f.legends[0].get_texts()] for f in figs]
    assert labels == [["GT lesion", "lung", "distractor"], ["GT lesion", "lung"]]
    yellow = [sum(1 for c in ax.collections if np.allclose(np.ravel(c.get_edgecolor())[:3], (1, 1, 0)))
              for ax in figs[0].axes[:3]]
    assert all(n > 0 for n in yellow)  # the first row goes through the peak, where the distractor voxel is


def test_overlay_title_reads_energy_and_chance_inside_the_lung(tmp_path, rng, monkeypatch):
    """The title's lesion energy and uniform-map share are counted over the lung (as localisation.csv), not the
    whole volume: with heat outside the lung and a small lung, both differ from the whole-volume figures."""
    from survival3d.explain import io

    figs = []
    monkeypatch.setattr(io, "_save", lambda fig, path: figs.append(fig) or path)
    image, heat, mask, _ = _case(rng)
    lung = np.zeros_like(image)
    lo = rng.integers(3, 6)
    lung[lo:lo + 14, lo:lo + 14, lo:lo + 14] = 1
    mask *= lung
    if not mask.any():
        mask[lo + 5:lo + 8, lo + 5:lo + 8, lo + 5:lo + 8] = 1
    io.plot_overlays(image, heat, tmp_path / "o.png", mask=mask, lung_mask=lung)
    m, v = mask > 0, lung > 0
    energy = heat[m & v].sum() / heat[v].sum()
    chance = (m & v).sum() / v.sum()
    title = figs[0]._suptitle.get_text()
    assert f"energy in lesion {energy:.2f} (uniform map: {chance:.2f})" in title
    assert f"(uniform map: {m.mean():.2f})" not in title  # the whole volume's share: what the title used to show


def test_training_heatmap_figure(checked, tmp_path, rng):
    from survival3d.explain.callbacks import _png

    image, heat, mask, _ = _case(rng)
    _png(image, heat / heat.sum(), mask > 0, {"lesion centre": (10, 10, 10), "p peak": (5, 5, 5)}, "title",
         tmp_path / "h.png")
    _assert_clean(checked, 1)


def test_dummy_preview_figures(checked, tmp_path, rng):
    from survival3d.data.dummy import write_dummy_dataset
    from survival3d.data.preview import save_preview

    manifest = write_dummy_dataset(tmp_path / "d", 1, n=4, size=16, seed=int(rng.integers(1 << 30)), progress=False)
    save_preview(manifest, n_cases=4)
    _assert_clean(checked, 2)


def test_glsa_confusion_matrix(checked, tmp_path, rng):
    from survival3d.glsa.trainer import save_confusion_matrix

    save_confusion_matrix(rng.integers(0, 20, (3, 3)), ["a", "b", "c"], tmp_path / "cm.png", "run")
    _assert_clean(checked, 1)


def test_flex_figures(checked, tmp_path, rng):
    from survival3d.flex.experiments import _plot_conv_ratio, _plot_curves

    rows = []
    for k, (lg, mk) in enumerate([("threshold", "hard"), ("threshold", "soft"), ("channelwise_maxpool", "hard")]):
        eps = [0.0, 0.05, 0.1]
        rows.append({"dataset": "digits", "logits": lg, "masking": mk, "eps": eps, "run_id": f"r{k}",
                     "curves": {"fgsm": list(np.sort(rng.random(3))[::-1])}})
        hist = tmp_path / "runs" / f"r{k}"
        hist.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2, 3], "val_conv_ratio": rng.random(3)}).to_csv(hist / "history.csv", index=False)
    table = pd.DataFrame(rows)
    _plot_curves(table, ["fgsm"], tmp_path / "curves.png")
    _plot_conv_ratio(tmp_path, table, tmp_path / "conv.png")
    _assert_clean(checked, 2)


def test_peak_centre_is_the_centre_of_the_peak_cubelet(rng):
    from survival3d.explain.io import lesion_peak, peak_centre

    grid = rng.random((5, 6, 4))
    ps = 4
    heat = np.kron(grid, np.ones((ps,) * 3))
    cubelet = np.array(np.unravel_index(int(np.argmax(grid)), grid.shape))
    assert np.array_equal(peak_centre(heat), cubelet * ps + ps // 2)  # the plateau's centroid, rounded onto it
    mask = np.zeros(heat.shape, bool)
    mask[:ps, :ps, :ps] = True
    hit = lesion_peak(heat, mask)
    assert mask[hit] and heat[hit] == heat[mask].max()
