"""Writers of the node's result objects: a Comprehensive SR per study, a heatmap Secondary Capture
per image and a summary Secondary Capture per study."""
