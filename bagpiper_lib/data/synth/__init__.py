"""Building blocks of the embedded synthetic corpus (``bagpiper_lib.data.synthetic``).

``attributes`` holds the discrete value sets, ``music`` / ``sound`` / ``voice`` sample parameters and
render waveforms, ``captions`` writes captions from parameters, ``parsing`` reads them back, ``text``
generates the text-only corpus.
"""
