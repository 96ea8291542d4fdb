"""Where the course's folders are, for every layer (the builder, the grader, the command line)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"  # authored notebooks, the source of truth
CHAPTERS = ROOT / "chapters"  # the student edition, generated from SOLUTIONS
WORKSPACE = ROOT / "workspace"  # a learner's own copy; nothing in the course writes there uninvited
