from legibility.report.figures import layers_figure, suppression_figure
from legibility.report.frontier import agreement_figure, frontier_figure, pareto_front
from legibility.report.html import render_report, write_report

__all__ = [
    "agreement_figure",
    "frontier_figure",
    "layers_figure",
    "pareto_front",
    "render_report",
    "suppression_figure",
    "write_report",
]
