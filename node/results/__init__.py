"""Writers of the node's result objects: a Comprehensive SR per study, a heatmap Secondary Capture
per image and a summary Secondary Capture per study.

Importing the package puts a cache in front of highdicom's lookups of the standard's IOD tables
(node/results/highdicom_lookups.py): the same answers, each computed once per process."""

from node.results.highdicom_lookups import cache_iod_lookups

cache_iod_lookups()
