"""Chapter 07 — text-to-image in miniature (in progress): the parts built so far.

    judge.py   an attribute judge for captioned-digit images (the miniature of GenEval's detector):
               a CNN with one head per attribute, trained on the renderer's exact labels

The analytic measurers (`captions.measure_attributes`) and the cross-attention block
(`diffusion.CrossAttention`) live with the data and the U-Net they belong to.
"""

from aigc_lib.text_to_image.judge import AttributeJudge, judge_accuracy, judge_predict, train_judge

__all__ = ["AttributeJudge", "judge_accuracy", "judge_predict", "train_judge"]
