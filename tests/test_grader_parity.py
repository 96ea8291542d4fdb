"""The classroom grader and the notebook's own check give a wrong answer the same points.

The grader runs learner code in a sandbox and judges values that crossed a wire; the notebook's
check (`run_cases`) judges them in the learner's kernel. Mistakes that only show in what crosses
the wire — a result still tracking gradients, an input changed in place — must cost the same
in both. Each mutant below replaces one solution cell of a correct notebook.
"""

import inspect
import textwrap

import nbformat
import pytest
from test_exercise_mutations import MUTANTS, _linear_gan, score
from test_grader import LIMITS

from aigc_lib.exercises import get_exercise
from aigc_lib.grading import Grader
from aigc_lib.paths import SOLUTIONS

CASES = [  # (exercise, mutant, helpers its source calls)
    ("02.gan_sgd_step", "step_forgets_detach", [_linear_gan]),  # returns tensors that track gradients
    ("03.reparameterize", "reparam_in_place", []),  # mu.add_(...)
    ("05.guided_eps", "guidance_in_place", []),  # eps_cond.sub_(...).mul_(...).add_(...)
    ("03.reparameterize", "reparam_fresh_noise", []),  # an ordinary wrong value, for contrast
]


def cell_source(fn, function: str, helpers) -> str:
    def plain(f):
        lines = inspect.getsource(f).splitlines()
        return "\n".join(line for line in lines if not line.startswith("@"))

    own = plain(fn).replace(f"def {fn.__name__}(", f"def {function}(", 1)
    return "\n\n".join([*(plain(h) for h in helpers), textwrap.dedent(own)])


@pytest.mark.parametrize("key,name,helpers", CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_grader_scores_a_mutant_as_the_notebook_check_does(key, name, helpers, tmp_path):
    ex = get_exercise(key)
    fn = MUTANTS[key][name]
    source = next(SOLUTIONS.glob(f"{key[:2]}_*.ipynb"))
    nb = nbformat.read(source, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == ex.function]
    assert len(cells) == 1
    cells[0].source = cell_source(fn, ex.function, helpers)
    path = tmp_path / source.name
    nbformat.write(nb, path)

    report = Grader(key[:2], limits=LIMITS).grade(path)
    by_function = {e["function"]: e["points"] for e in report["exercises"]}
    in_notebook, full = score(key, fn)
    assert in_notebook < full
    assert by_function[ex.function] == in_notebook, report
    assert report["score"] == report["max_score"] - (full - in_notebook)
