"""Chapter 08 — speech: audio as data, a text-to-speech model and a WaveNet, trained on the learner's CPU.

audio.py       the front end in torch: STFT, mel filterbank, log-mel, Griffin-Lim, μ-law, MCD, DTW,
               resampling, a pitch tracker (tested against librosa)
teacher.py     espeak-ng (loaded at run time from the espeakng-loader package) reads numbers in
               English and Mandarin, with each phoneme's duration; corpora cached on disk
fastspeech.py  a FastSpeech-style text-to-mel model: FFT blocks, duration predictor, length regulator
wavenet.py     a small μ-law WaveNet with naive and cached (Fast WaveNet) generation
judge.py       a spoken-number classifier: the measure of intelligibility
tts.py         corpus -> training data, speaking a number, the chapter's measures
"""
