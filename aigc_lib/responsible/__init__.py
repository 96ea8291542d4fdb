"""Chapter 09 — lighter, traceable, accountable (in progress): the parts built so far.

compress.py     int8 quantisation by hand (symmetric, per output row) and with PyTorch's dynamic
                quantisation; the knowledge-distillation loss (Hinton, Vinyals & Dean, 2015)
watermark.py    a statistical text watermark (Kirchenbauer et al., ICML 2023): keyed green lists,
                the logit bias δ at sampling, detection by a z-score that needs the key, not the model
memorization.py nearest-neighbour distances from generated samples to the training set
"""
