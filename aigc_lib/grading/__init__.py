"""Classroom grading: learner code runs in an isolated sandbox; verdicts are computed here."""

from aigc_lib.grading.classroom import find_submissions, grade_class
from aigc_lib.grading.grader import Grader
from aigc_lib.grading.isolate import Limits, SandboxBroken, isolation_level

__all__ = ["Grader", "Limits", "SandboxBroken", "find_submissions", "grade_class", "isolation_level"]
