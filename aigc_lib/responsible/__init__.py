"""Chapter 09 — lighter, traceable, accountable: the parts of the chapter, built from the earlier ones.

compress.py     int8 quantisation by hand (symmetric, per output row) and with PyTorch's dynamic
                quantisation; the knowledge-distillation loss (Hinton, Vinyals & Dean, 2015) and the
                objective that trains chapter 04's GPT as a student
watermark.py    a statistical text watermark (Kirchenbauer et al., ICML 2023): keyed green lists, the
                logit bias δ at sampling, detection by a z-score that needs the key, not the model;
                a keyed ±ε image watermark found by correlation
detect.py       a real-vs-generated image classifier, and its accuracy
memorization.py nearest-neighbour distances from generated samples to the training set, and a copy
                score after Carlini et al. (USENIX Security 2023)
"""
