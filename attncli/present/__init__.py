"""What is shown: the palette, weight and output tables, heatmaps, the reports of `inspect` and `diff`,
export to SVG and HTML. Everything returns Rich renderables and never prints, exits or imports torch.
"""
