"""Unstructured compression: what happens to individual weights (Deep Compression steps 1 and 2).

* :mod:`.pruning` -- magnitude pruning at weight, vector, kernel or filter granularity, with masks
  that hold through fine-tuning;
* :mod:`.sensitivity` -- one global pruning budget spread over the tensors by their sensitivity;
* :mod:`.kmeans` -- fast exact 1-D k-means;
* :mod:`.sharing` -- per-tensor weight sharing on a k-means codebook, with centroid fine-tuning.
"""
