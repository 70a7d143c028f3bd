"""The course machinery: exercises from solutions, the autograder, the lessons' figures.

==================  ==============================================================
``release.py``      ``python -m refimpl.course.release [--check]``: ``exercises/`` from
                    ``solutions/`` with nbgrader's own preprocessors
``grade.py``        ``python -m refimpl.grade PATH``: grade exercise notebooks against
                    ``grading/`` (one test module per exercise, shipped with the package)
``runner.py``       the grading worker: the learner's cells and the tests, in their own
                    process, every cell and every test time-limited
``checks.py``       what grading tests use: ``@points``, comparisons that explain
                    themselves, random inputs
``figures.py``      the pictures the lessons draw (plotting code stays out of notebooks)
==================  ==============================================================
"""
