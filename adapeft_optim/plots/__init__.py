"""Figures of parameter-group influence: PPI heatmaps, APPI curves, Pareto frontiers.

Two layers:

* **Processing** (pure numpy, no matplotlib): :func:`iqr_mask`, :func:`ema`,
  :func:`ppi_matrix`, :func:`appi_curves` and :func:`heatmap_values`, which implements the
  outlier removal / smoothing / normalisation of the paper's Appendix A.1.
* **Figures** (matplotlib, the optional ``plot`` extra): :func:`plot_ppi_heatmap`,
  :func:`plot_appi_curves` and :func:`plot_frontier`. Each writes an image file and returns
  its path.

Note [plots leave no global trace]
    Figures are built from :class:`matplotlib.figure.Figure` with an explicit
    :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, never through
    ``matplotlib.pyplot``: pyplot would pick (and possibly switch) the user's global backend,
    register figures that are never closed, and is not thread safe. No rcParams are written
    and no ``rc_context`` is used, so a notebook's or an application's matplotlib setup is
    exactly what it was before the call. matplotlib is imported inside the plotting
    functions only, so ``import adapeft_optim.plots`` works without it.

``history`` arguments take the optimizer's probe records (``GeNAdaPEFT.history``: a list of
dicts with at least the keys ``step``, ``group``, ``ppi`` and ``accepted``) or any object
with a ``history`` attribute holding them, e.g. the optimizer itself.

Note [valued probes]
    A probe's PPI enters the figures when the probe was *valued*, exactly as it enters
    ``opt.appi``: a record whose ``case`` is not ``None`` (``"interior"``, ``"trust region"``,
    ``"no descent"``; Note [Influence of every probe] in the optimizer). ``accepted`` says
    whether the lr fit was used, which is a different question: a concave line is valued but
    not accepted. Records without a ``case`` key (histories written before it existed) count
    when ``accepted``. So the last column of :func:`appi_curves` is ``opt.appi``.

Modules: :mod:`~adapeft_optim.plots.processing` (the numpy building blocks),
:mod:`~adapeft_optim.plots.heatmap`, :mod:`~adapeft_optim.plots.appi` and
:mod:`~adapeft_optim.plots.frontier` (one figure each, with its own processing), and
``_common`` (the lazy matplotlib import, saving, record reading and checks). Every public name
is re-exported here.
"""

from .appi import appi_curves, plot_appi_curves
from .frontier import plot_frontier
from .heatmap import heatmap_caption as heatmap_caption
from .heatmap import heatmap_values, plot_ppi_heatmap
from .processing import ema, iqr_mask, ppi_matrix

__all__ = [
    "iqr_mask",
    "ema",
    "ppi_matrix",
    "appi_curves",
    "heatmap_values",
    "plot_ppi_heatmap",
    "plot_appi_curves",
    "plot_frontier",
]
