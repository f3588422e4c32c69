from legibility.report.figures import layers_figure, suppression_figure

__all__ = ["layers_figure", "suppression_figure"]
