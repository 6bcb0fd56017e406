"""Coding: from a compressed model to the bytes of a ``.sqz`` file and back (Deep Compression step 3).

* :mod:`.streams` -- entropy coding of one symbol stream (Huffman :mod:`.huffman`, ANS :mod:`.ans`, raw);
* :mod:`.positions` -- sparse positions as relative indices with filler zeros, or row-wise run lengths;
* :mod:`.bitmask` -- a mask as bits coded with adaptive context-modelled probabilities;
* :mod:`.sparse` -- per layer, the smallest of those position codings;
* :mod:`.codebook` -- compact coding of a sorted codebook;
* :mod:`.varint` -- the unsigned LEB128 integers of lengths, counts and tables;
* :mod:`.container` -- the pickle-free, checksummed container format;
* :mod:`.codec` -- a model to container sections and back (the decoder).
"""
