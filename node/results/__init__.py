"""Writers of the node's result objects: a Comprehensive SR per study, a Secondary Capture per image."""
