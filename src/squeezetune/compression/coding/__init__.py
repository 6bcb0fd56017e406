"""Coding: from a compressed model to the bytes of a ``.sqz`` file and back (Deep Compression step 3).

* :mod:`.streams` -- entropy coding of one symbol stream (Huffman :mod:`.huffman`, ANS :mod:`.ans`, raw);
* :mod:`.positions` -- sparse positions as relative indices with filler zeros;
* :mod:`.codebook` -- compact coding of a sorted codebook;
* :mod:`.container` -- the pickle-free, checksummed container format;
* :mod:`.codec` -- a model to container sections and back (the decoder).
"""
